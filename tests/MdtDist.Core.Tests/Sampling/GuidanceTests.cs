using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Sampling;

public class GuidanceTests
{
    /// <summary>v = x·(1 + c̄) + t where c̄ is the per-sample mean of the condition: distinguishes cond from neg cond.</summary>
    private sealed class Probe : IFlowModel
    {
        public List<double> SeenConditionMeans { get; } = new();
        public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
        {
            var c = condition!.mean(new long[] { 1 });
            SeenConditionMeans.Add(condition.mean().item<double>());
            return x.Data * (1 + x.PerSample(c)) + x.PerSample(t);
        }
    }

    [Fact]
    public void GuidedVelocityIsOnePlusWTimesConditionalMinusWTimesUnconditional()
    {
        var probe = new Probe();
        using var x = torch.randn(3, 4, dtype: ScalarType.Float64);
        using var cond = torch.full(new long[] { 3, 5 }, 2.0, dtype: ScalarType.Float64);
        using var t = torch.tensor(new[] { 0.9, 0.7, 0.6 }, dtype: ScalarType.Float64);
        var cfg = new ClassifierFreeGuidance(probe, 3.0);
        using var v = cfg.Velocity(Latent.Dense(x), t, cond);
        // v_c = 3x + t, v_u (zeros) = x + t  ->  4·v_c − 3·v_u = 9x + t
        using var expected = 9 * x + t.unsqueeze(1);
        Assert.True((v - expected).abs().max().item<double>() < 1e-14);
        Assert.Equal(new[] { 2.0, 0.0 }, probe.SeenConditionMeans);
    }

    [Fact]
    public void ExplicitNegativeConditionIsUsed()
    {
        var probe = new Probe();
        using var x = torch.randn(2, 4, dtype: ScalarType.Float64);
        using var cond = torch.full(new long[] { 2, 5 }, 2.0, dtype: ScalarType.Float64);
        using var neg = torch.full(new long[] { 2, 5 }, -1.0, dtype: ScalarType.Float64);
        using var t = torch.full(new long[] { 2 }, 1.0, dtype: ScalarType.Float64);
        using var v = new ClassifierFreeGuidance(probe, 0.5, neg).Velocity(Latent.Dense(x), t, cond);
        // 1.5·(3x + 1) − 0.5·(0·x + 1) = 4.5x + 1
        using var expected = 4.5 * x + 1;
        Assert.True((v - expected).abs().max().item<double>() < 1e-14);
    }

    [Fact]
    public void IntervalSwitchesPerSampleAndIsInclusive()
    {
        var probe = new Probe();
        using var x = torch.ones(4, 2, dtype: ScalarType.Float64);
        using var cond = torch.full(new long[] { 4, 3 }, 1.0, dtype: ScalarType.Float64);
        var cfg = new ClassifierFreeGuidance(probe, 2.0, intervalStart: 0.5, intervalEnd: 0.95);
        using var t = torch.tensor(new[] { 0.5, 0.95, 0.49, 0.96 }, dtype: ScalarType.Float64);
        using var v = cfg.Velocity(Latent.Dense(x), t, cond);
        // inside: 3·(2x + t) − 2·(x + t) = 4x + t ; outside: 2x + t
        var got = v[.., 0].data<double>().ToArray();
        Assert.Equal(4 + 0.5, got[0], 12);
        Assert.Equal(4 + 0.95, got[1], 12);
        Assert.Equal(2 + 0.49, got[2], 12);
        Assert.Equal(2 + 0.96, got[3], 12);
        Assert.True(cfg.AppliesAt(0.5) && cfg.AppliesAt(0.95) && !cfg.AppliesAt(0.4999) && !cfg.AppliesAt(0.9501));
    }

    [Fact]
    public void OutsideTheIntervalOnlyOneEvaluationIsMade()
    {
        var probe = new Probe();
        var cfg = new ClassifierFreeGuidance(probe, 5.0, intervalStart: 0.5, intervalEnd: 1.0);
        using var noise = torch.randn(2, 3, dtype: ScalarType.Float64);
        using var cond = torch.ones(2, 3, dtype: ScalarType.Float64);
        // TRELLIS-image defaults: 25 steps, rescale 3, interval [0.5, 1] -> 19 guided steps + 6 plain = 44 evaluations.
        using var r = new EulerSolver().Sample(cfg, Latent.Dense(noise), cond, TimeGrid.Trellis(25, 3.0));
        Assert.Equal(44, r.Evaluations);
        Assert.Equal(44, probe.SeenConditionMeans.Count);
        // A 2-step student at t ∈ {1, 0.5} is fully inside the interval: 4 evaluations.
        using var r2 = new EulerSolver().Sample(cfg, Latent.Dense(noise), cond, TimeGrid.Trellis(2));
        Assert.Equal(4, r2.Evaluations);
    }

    [Fact]
    public void RejectsBadArguments()
    {
        var probe = new Probe();
        Assert.Contains("reversed", Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, 1, null, 0.8, 0.2)).Message);
        Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, 1, null, -0.1, 0.5));
        Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, 1, null, 0.1, 1.5));
        Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, double.NaN));
        Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, -1));
        using var x = torch.ones(1, 2, dtype: ScalarType.Float64);
        using var t = torch.ones(1, dtype: ScalarType.Float64);
        Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(probe, 1).Velocity(Latent.Dense(x), t, null));
    }
}
