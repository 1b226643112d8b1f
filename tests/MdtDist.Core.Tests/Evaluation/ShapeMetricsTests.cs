using MdtDist.Core.Evaluation;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Evaluation;

public class ShapeMetricsTests
{
    [Fact]
    public void ChamferIsZeroOnItselfAndTheSquaredDistanceBetweenTwoPoints()
    {
        using var a = torch.randn(new long[] { 5000, 3 }, dtype: ScalarType.Float64, generator: new Generator(1));
        Assert.Equal(0.0, ShapeMetrics.Chamfer(a, a), 12);
        using var p = torch.tensor(new[] { 0.0, 0, 0 }).reshape(1, 3);
        using var q = torch.tensor(new[] { 1.0, 2, 2 }).reshape(1, 3);
        Assert.Equal(9.0, ShapeMetrics.Chamfer(p, q), 12);
        // Asymmetric sets: {0} vs {0, 2}: directed 0 and (0 + 4)/2 = 2 -> 1.
        using var r = torch.tensor(new[] { 0.0, 2.0 }).reshape(2, 1);
        Assert.Equal(1.0, ShapeMetrics.Chamfer(torch.zeros(1, 1, dtype: ScalarType.Float64), r), 12);
        Assert.Throws<ArgumentException>(() => ShapeMetrics.Chamfer(a, torch.zeros(4, 2)));
    }

    [Fact]
    public void FrechetMatchesClosedFormsForShiftsAndScalings()
    {
        using var a = torch.randn(new long[] { 400, 4 }, dtype: ScalarType.Float64, generator: new Generator(2));
        Assert.Equal(0.0, ShapeMetrics.Frechet(a, a), 9);
        using var shift = torch.tensor(new[] { 1.0, -2.0, 0.5, 0.0 });
        // Same covariance: only the mean term remains.
        Assert.Equal(1 + 4 + 0.25, ShapeMetrics.Frechet(a, a + shift), 9);
        // b = 2(a - mean): Σb = 4Σa, so Tr(Σ + 4Σ - 2·2Σ) = Tr(Σ), plus the squared mean of a.
        using var centred = a - a.mean(new long[] { 0 }, keepdim: true);
        double traceA = centred.square().sum().item<double>() / 399;
        double meanSq = a.mean(new long[] { 0 }).square().sum().item<double>();
        Assert.Equal(traceA + meanSq, ShapeMetrics.Frechet(a, 2 * centred), 8);
    }

    [Fact]
    public void SetMetricsSeparateAFarSetFromACloseOne()
    {
        var g = new Generator(3);
        var reference = Enumerable.Range(0, 6).Select(_ => torch.randn(new long[] { 50, 3 }, dtype: ScalarType.Float64, generator: g)).ToList();
        var close = Enumerable.Range(0, 6).Select(_ => torch.randn(new long[] { 50, 3 }, dtype: ScalarType.Float64, generator: g)).ToList();
        var far = close.Select(x => x + 10.0).ToList();
        var good = ShapeMetrics.CompareSets(close, reference, ShapeMetrics.Chamfer);
        var bad = ShapeMetrics.CompareSets(far, reference, ShapeMetrics.Chamfer);
        Assert.True(good.MinimumMatchingDistance < bad.MinimumMatchingDistance / 10);
        Assert.Equal(1.0, bad.OneNearestNeighbourAccuracy);
        Assert.True(good.OneNearestNeighbourAccuracy < 0.9);
        Assert.True(good.Coverage >= bad.Coverage);
        Assert.InRange(good.Coverage, 1.0 / 6, 1.0);
        Assert.Throws<ArgumentException>(() => ShapeMetrics.CompareSets(close.Take(1).ToList(), reference, ShapeMetrics.Chamfer));
    }
}
