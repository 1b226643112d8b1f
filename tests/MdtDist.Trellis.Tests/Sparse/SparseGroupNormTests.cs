using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

/// <summary>TRELLIS's <c>SparseGroupNorm32</c>: a group norm per sample over that sample's rows, in at least float32.</summary>
public class SparseGroupNormTests
{
    /// <summary>The definition in float64: per sample and group, (x − mean) / sqrt(biased var + eps) · w + b.</summary>
    private static Tensor Reference(Tensor x, long[] counts, long groups, Tensor w, Tensor b, double eps)
    {
        var parts = new List<Tensor>();
        long start = 0, c = x.shape[1];
        foreach (var n in counts)
        {
            var rows = x.narrow(0, start, n).to(ScalarType.Float64).view(n, groups, c / groups);
            var mean = rows.mean(new long[] { 0, 2 }, keepdim: true);
            var variance = (rows - mean).square().mean(new long[] { 0, 2 }, keepdim: true);
            parts.Add(((rows - mean) / (variance + eps).sqrt()).view(n, c) * w.to(ScalarType.Float64) + b.to(ScalarType.Float64));
            start += n;
        }
        return torch.cat(parts, 0);
    }

    private static (SparseTensor X, long[] Counts, SparseGroupNorm32 Norm) Case(ScalarType dtype, Generator g)
    {
        var coords = SparseTestData.RandomCoords(8, new[] { 40, 0, 17 }, seed: 5);   // an empty sample in the middle
        long n = coords.shape[0];
        var sites = new SparseCoordinates(coords, 8);
        var x = new SparseTensor((torch.randn(n, 64, dtype: ScalarType.Float64, generator: g) * 3 + 1).to(dtype), sites);
        var norm = new SparseGroupNorm32(8, 64, 1e-5, true, ScalarType.Float32);
        using (torch.no_grad())
        {
            norm.weight!.normal_(1, 0.2, generator: g);
            norm.bias!.normal_(0, 0.2, generator: g);
        }
        return (x, sites.RowCounts.ToArray(), norm);
    }

    [Fact]
    public void Float64MatchesTheDefinitionPerSample()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(61);
        var (x, counts, norm) = Case(ScalarType.Float64, g);
        norm.to(ScalarType.Float64);
        var expected = Reference(x.Feats, counts, 8, norm.weight!, norm.bias!, 1e-5);
        var y = norm.Forward(x).Feats;
        Assert.Equal(ScalarType.Float64, y.dtype);
        // float64 moments of at most 40·8 values in another order: a few ulps
        Assert.True(SparseTestData.MaxRel(expected, y) < 1e-12, $"rel {SparseTestData.MaxRel(expected, y)}");
        var act = norm.ForwardSiLU(x, ScalarType.Float64);
        Assert.True(SparseTestData.MaxRel(nn.functional.silu(expected), act) < 1e-12);
    }

    [Fact]
    public void BFloat16IsNormalisedInFloat32AndRoundedOnce()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(62);
        var (x, counts, norm) = Case(ScalarType.BFloat16, g);
        var expected = Reference(x.Feats, counts, 8, norm.weight!, norm.bias!, 1e-5);
        var y = norm.Forward(x).Feats;
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        // computed in float32 from the exact bf16 inputs and rounded once to bf16: |error| <= u |y| with bf16's unit
        // roundoff u = 2^-8 (8-bit significand), + float32 rounding of the moments (~1e-6 relative of values of order 1-10)
        var err = (y.to(ScalarType.Float64) - expected).abs();
        var bound = expected.abs() * Math.Pow(2, -8) + 1e-5;
        Assert.True(err.le(bound).all().item<bool>(), $"max err {err.max().item<double>()}");
    }

    [Fact]
    public void WrongWidthNamesTheExpectedShape()
    {
        using var scope = torch.NewDisposeScope();
        var norm = new SparseGroupNorm32(8, 64);
        var coords = SparseTestData.RandomCoords(8, new[] { 5 }, seed: 1);
        var ex = Assert.Throws<ArgumentException>(() => norm.Forward(new SparseTensor(torch.zeros(coords.shape[0], 32), new SparseCoordinates(coords, 8))));
        Assert.Contains("[N, 64]", ex.Message);
    }
}
