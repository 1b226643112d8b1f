using MdtDist.Core.Flow;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>TRELLIS's two multi-image modes on a recording velocity field whose output reveals the condition it saw.</summary>
public class MultiImageGuidanceTests
{
    // v(x, t | c) = x · (1 + mean(c)): a view with tokens all equal to k scales x by 1 + k; the zero condition gives x.
    private static IFlowModel Recording(List<double> seen) => new DelegateFlowModel((x, t, c) =>
    {
        seen.Add(c!.mean().item<double>());
        return x.Data * (1 + c.mean(new long[] { 1, 2 }).reshape(-1, 1));
    });

    private static Tensor Views(params double[] values) =>
        torch.stack(values.Select(v => torch.full(new long[] { 3, 2 }, v, dtype: ScalarType.Float64)).ToArray());

    [Fact]
    public void StochasticUsesViewStepModN()
    {
        var seen = new List<double>();
        var sampler = StageSampler.TrellisImageLarge with { Steps = 5, CfgStrength = 0 };
        var m = new MultiImageGuidance(Recording(seen), sampler, MultiImageMode.Stochastic);
        var grid = sampler.Grid();
        using var x = torch.ones(2, 2, dtype: ScalarType.Float64);
        using var views = Views(1, 2);
        for (int k = 0; k < 5; k++)
            m.Velocity(Latent.Dense(x), torch.full(2, grid[k], dtype: ScalarType.Float64), views).Dispose();
        Assert.Equal(new double[] { 1, 2, 1, 2, 1 }, seen);
    }

    [Fact]
    public void MultiDiffusionAveragesViewsThenGuidesAgainstZeroInsideTheInterval()
    {
        var seen = new List<double>();
        var sampler = StageSampler.TrellisImageLarge with { Steps = 4, CfgStrength = 2.0, CfgIntervalStart = 0.5, CfgIntervalEnd = 1.0 };
        var m = new MultiImageGuidance(Recording(seen), sampler, MultiImageMode.MultiDiffusion);
        using var x = torch.ones(1, 2, dtype: ScalarType.Float64);
        using var views = Views(1, 3);
        // Inside: mean of (1+1)x and (1+3)x = 3x; guided (1+2)·3x − 2·x = 7x.
        using var inside = m.Velocity(Latent.Dense(x), torch.full(1, 0.9, dtype: ScalarType.Float64), views);
        Assert.Equal(7.0, inside[0, 0].item<double>(), 12);
        Assert.Equal(new double[] { 1, 3, 0 }, seen);
        seen.Clear();
        // Outside the interval: the average only.
        using var outside = m.Velocity(Latent.Dense(x), torch.full(1, 0.2, dtype: ScalarType.Float64), views);
        Assert.Equal(3.0, outside[0, 0].item<double>(), 12);
        Assert.Equal(new double[] { 1, 3 }, seen);
    }
}
