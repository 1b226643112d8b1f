using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Sampling;

/// <summary>Solvers count network evaluations by asking the model (<see cref="IFlowModel.EvaluationsAt"/>), never by its type.</summary>
public class EvaluationCountTests
{
    /// <summary>A wrapper of its own kind (not guidance) that calls its model three times per velocity.</summary>
    private sealed class ThreeCalls : IFlowModel
    {
        public int Calls;

        public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
        {
            Calls += 3;
            return torch.zeros_like(x.Data);
        }

        public int EvaluationsAt(double t) => 3;
    }

    private static Latent Noise() => Latent.Dense(torch.randn(new long[] { 2, 3 }, generator: new Generator(5)));

    [Fact]
    public void SolversAskTheModelForItsCost()
    {
        var model = new ThreeCalls();
        using var r = new EulerSolver().Sample(model, Noise(), null, TimeGrid.Trellis(4));
        Assert.Equal(12, r.Evaluations);
        Assert.Equal(model.Calls, r.Evaluations);
        using var h = new HeunSolver().Sample(new ThreeCalls(), Noise(), null, TimeGrid.Trellis(4));
        Assert.Equal(24, h.Evaluations);
    }

    /// <summary>Guidance reports twice its model's cost inside the interval and once outside, also when nested.</summary>
    [Fact]
    public void GuidanceReportsItsOwnCount()
    {
        IFlowModel plain = new DelegateFlowModel((x, t, c) => torch.zeros_like(x.Data));
        Assert.Equal(1, plain.EvaluationsAt(0.5));
        var cfg = new ClassifierFreeGuidance(plain, 3.0, intervalStart: 0.5, intervalEnd: 1.0);
        Assert.Equal(2, cfg.EvaluationsAt(0.75));
        Assert.Equal(1, cfg.EvaluationsAt(0.25));
        var nested = new ClassifierFreeGuidance(cfg, 1.0);
        Assert.Equal(4, nested.EvaluationsAt(0.75));
        Assert.Equal(2, nested.EvaluationsAt(0.25));
        var wrappedThree = new ClassifierFreeGuidance(new ThreeCalls(), 1.0);
        Assert.Equal(6, wrappedThree.EvaluationsAt(0.1));

        // 25 TRELLIS steps with s = 3 and interval [0.5, 1]: guidance on the first 19 steps → 19·2 + 6 = 44 evaluations.
        using var cond = torch.zeros(2, 1, 1);
        using var r = new EulerSolver().Sample(cfg, Noise(), cond, TimeGrid.Trellis(25, 3.0));
        Assert.Equal(44, r.Evaluations);
    }
}
