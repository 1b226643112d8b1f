using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Distillation;

/// <summary>Analytic velocity fields for closed-form checks; all written against Latent so they work on any layout.</summary>
internal static class Fields
{
    /// <summary>v = a·x + b·t (+ g·c where c is a per-sample condition [B]).</summary>
    public static IFlowModel Linear(double a, double b, double g = 0) => new DelegateFlowModel((x, t, c) =>
    {
        var v = a * x.Data + b * x.PerSample(t);
        return c is null ? v : v + g * x.PerSample(c);
    });

    /// <summary>A smooth nonlinear elementwise field (same formula on every element, so dense and row layouts agree).</summary>
    public static IFlowModel Nonlinear() => new DelegateFlowModel((x, t, c) =>
    {
        var tb = x.PerSample(t);
        var v = torch.sin(x.Data) * (1 + tb * tb) + 0.3 * x.Data * x.Data * tb - torch.cos(3 * tb);
        return c is null ? v : v + x.PerSample(c) * torch.tanh(x.Data);
    });

    public static double MaxAbs(Tensor a, Tensor b)
    {
        using var d = (a - b).abs().max();
        return d.item<double>();
    }
}

public class VelocityMatchingLossTests
{
    private static (Latent x0, Tensor noise, Tensor t) Data(long b = 3, long d = 5, int seed = 1)
    {
        using var g = new Generator((ulong)seed);
        var x0 = torch.randn(new[] { b, d }, dtype: ScalarType.Float64, generator: g);
        var noise = torch.randn(new[] { b, d }, dtype: ScalarType.Float64, generator: g);
        var t = torch.tensor(new[] { 0.9, 0.35, 0.62 }.Take((int)b).ToArray(), dtype: ScalarType.Float64);
        return (Latent.Dense(x0), noise, t);
    }

    [Fact]
    public void DiscreteTargetOfALinearStudentIsClosedForm()
    {
        // Student v_S = a x + b t: one teacher Euler step of size Δ' = t - (t - Δ) gives dv/dt = (a Δ' v_T + b Δ') / Δ
        // ≈ a v_T + b, so v_tgt = v_T - t (a v_T + b).
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var teacher = Fields.Nonlinear();
        var student = Fields.Linear(0.7, -0.4);
        var loss = new VelocityMatchingLoss(DistillationMode.Discrete, interval: 0.01, dNorm: false, guidanceScale: 0);
        var pair = loss.ComputePair(student, teacher, x0, noise, t, null);

        var path = new RectifiedFlowPath(1e-5);
        var xt = path.Interpolate(x0, noise, t);
        Assert.True(Fields.MaxAbs(xt, pair["x_t"]) == 0);
        var vT = teacher.Velocity(x0.With(xt), t, null);
        var tb = t.reshape(-1, 1);
        Assert.True(Fields.MaxAbs(pair["x_prev"], xt - (tb - (tb - 0.01)) * vT) == 0);
        var expectedDv = 0.7 * vT + (-0.4);
        Assert.True(Fields.MaxAbs(pair["dv_dt"], expectedDv) < 1e-11, $"dv_dt off by {Fields.MaxAbs(pair["dv_dt"], expectedDv)}");
        Assert.True(Fields.MaxAbs(pair.Target, vT - tb * expectedDv) < 1e-11);
        Assert.True(Fields.MaxAbs(pair.Prediction, 0.7 * xt - 0.4 * tb) < 1e-15);
        Assert.True(Fields.MaxAbs(pair["t_prev"], t - 0.01) == 0);
        Assert.False(pair.ContainsKey("v_teacher_neg"));
    }

    [Fact]
    public void ContinuousJvpIsExactForALinearStudent()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var teacher = Fields.Nonlinear();
        var loss = new VelocityMatchingLoss(DistillationMode.Continuous, dNorm: false, guidanceScale: 0);
        var pair = loss.ComputePair(Fields.Linear(0.7, -0.4), teacher, x0, noise, t, null);
        var expected = 0.7 * pair["v_teacher"] - 0.4;
        Assert.True(Fields.MaxAbs(pair["dv_dt"], expected) < 1e-14);
        Assert.True(Fields.MaxAbs(pair.Target, pair["v_teacher"] - t.reshape(-1, 1) * expected) < 1e-14);
    }

    [Fact]
    public void ContinuousJvpEqualsACentralFiniteDifference()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var student = Fields.Nonlinear();
        var teacher = Fields.Linear(-1.1, 0.5);
        var loss = new VelocityMatchingLoss(DistillationMode.Continuous, dNorm: false, guidanceScale: 0);
        var pair = loss.ComputePair(student, teacher, x0, noise, t, null);
        var xt = x0.With(pair["x_t"]);
        var vT = pair["v_teacher"];
        const double h = 1e-5;
        var plus = student.Velocity(xt.With(xt.Data + h * vT), t + h, null);
        var minus = student.Velocity(xt.With(xt.Data - h * vT), t - h, null);
        var fd = (plus - minus) / (2 * h);
        double err = Fields.MaxAbs(pair["dv_dt"], fd);
        Assert.True(err < 1e-8, $"JVP vs finite difference: {err}");
        Assert.True(fd.abs().max().item<double>() > 0.1, "the check must not be trivial");

        // The JVP also works inside no_grad (as in the VD term) and with a custom tangent in t.
        using (torch.no_grad())
        {
            var j = FlowModelJvp.TotalDerivative(student, xt, t, null, vT, torch.zeros_like(t));
            var fdx = (student.Velocity(xt.With(xt.Data + h * vT), t, null) - student.Velocity(xt.With(xt.Data - h * vT), t, null)) / (2 * h);
            Assert.True(Fields.MaxAbs(j, fdx) < 1e-8);
        }
    }

    [Fact]
    public void ContinuousJvpOfATimeIndependentModelIgnoresTheTimeTangent()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, _, t) = Data();
        var model = new DelegateFlowModel((x, tt, c) => torch.sin(x.Data));
        var u = torch.ones_like(x0.Data) * 0.5;
        var j = FlowModelJvp.TotalDerivative(model, x0, t, null, u);
        Assert.True(Fields.MaxAbs(j, torch.cos(x0.Data) * 0.5) < 1e-15);
    }

    [Fact]
    public void DNormDividesEachSampleByItsOwnNormPlusC()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var raw = new VelocityMatchingLoss(DistillationMode.Discrete, dNorm: false, guidanceScale: 0)
            .ComputePair(Fields.Nonlinear(), Fields.Linear(0.3, 1), x0, noise, t, null);
        var normed = new VelocityMatchingLoss(DistillationMode.Discrete, dNorm: true, dNormConstant: 0.1, guidanceScale: 0)
            .ComputePair(Fields.Nonlinear(), Fields.Linear(0.3, 1), x0, noise, t, null);
        var d = raw["dv_dt"];
        var n = d.square().sum(1, keepdim: true).sqrt();
        Assert.True(Fields.MaxAbs(normed["dv_dt"], d / (n + 0.1)) < 1e-15);
        Assert.True(Fields.MaxAbs(normed["dv_dt_norm"], n.expand_as(d)) < 1e-15);
        Assert.True(Fields.MaxAbs(normed.Target, normed["v_teacher"] - t.reshape(-1, 1) * d / (n + 0.1)) < 1e-15);
    }

    [Fact]
    public void TeacherGuidanceUsesZeroNegativeConditionUnlessGiven()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var cond = torch.tensor(new[] { 0.5, -1.0, 2.0 }, dtype: ScalarType.Float64);
        var teacher = Fields.Linear(0.2, 0.1, g: 3.0); // v_c = f + 3c, v_u(c = 0) = f
        var loss = new VelocityMatchingLoss(DistillationMode.Discrete, dNorm: false, guidanceScale: 40);
        var pair = loss.ComputePair(Fields.Linear(1, 0), teacher, x0, noise, t, cond);
        var xt = pair["x_t"];
        var f = 0.2 * xt + 0.1 * t.reshape(-1, 1);
        Assert.True(Fields.MaxAbs(pair["v_teacher_neg"], f) < 1e-15);
        Assert.True(Fields.MaxAbs(pair["v_teacher"], f + 41 * 3.0 * cond.reshape(-1, 1)) < 1e-12);

        var neg = torch.tensor(new[] { 1.0, 1.0, 1.0 }, dtype: ScalarType.Float64);
        var pair2 = loss.ComputePair(Fields.Linear(1, 0), teacher, x0, noise, t, cond, neg, guidanceScale: 2.0);
        Assert.True(Fields.MaxAbs(pair2["v_teacher"], f + 3.0 * (3 * cond.reshape(-1, 1) - 2 * 1.0)) < 1e-12);
    }

    [Fact]
    public void VmLossGradientFlowsOnlyThroughThePrediction()
    {
        // Student v = θ·x: VM loss mean((θ x_t - v_tgt)^2), v_tgt treated as constant → dL/dθ = 2 mean((θ x_t - v_tgt) x_t).
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var theta = torch.tensor(0.8, dtype: ScalarType.Float64).requires_grad_(true);
        var student = new DelegateFlowModel((x, tt, c) => theta * x.Data + x.PerSample(tt));
        var loss = new VelocityMatchingLoss(DistillationMode.Discrete, dNorm: true, guidanceScale: 0);
        var terms = loss.Compute(student, Fields.Nonlinear(), x0, noise, t, null, weight: 2.0);
        terms.Loss.backward();
        var xt = terms.Pair["x_t"];
        var expected = (2.0 * 2 * (terms.Pair.Prediction.detach() - terms.Pair.Target) * xt).mean();
        Assert.Equal(expected.item<double>(), theta.grad!.item<double>(), 12);
        Assert.False(terms.Pair.Target.requires_grad);
        Assert.True(Fields.MaxAbs(terms.PerSample, terms.Elementwise.detach().mean(new long[] { 1 })) < 1e-15);
    }

    [Fact]
    public void ConsistencyTargetsAreEulerStepsToTheMultiphaseBoundary()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var student = Fields.Linear(0.5, 0.25);
        var teacher = Fields.Nonlinear();
        var cm = new ConsistencyDistillationLoss(multiphase: 4, interval: 0.01, guidanceScale: 0);
        var pair = cm.ComputePair(student, teacher, x0, noise, t, null);
        var tTgt = pair["t_tgt"];
        Assert.Equal(new[] { 0.75, 0.25, 0.5 }, tTgt.data<double>().ToArray());
        var xt = pair["x_t"];
        var tb = t.reshape(-1, 1);
        var tgtb = tTgt.reshape(-1, 1);
        var vS = 0.5 * xt + 0.25 * tb;
        Assert.True(Fields.MaxAbs(pair.Prediction, xt - (tb - tgtb) * vS) < 1e-15);
        var vT = teacher.Velocity(x0.With(xt), t, null);
        var xPrev = xt - (tb - (tb - 0.01)) * vT;
        var tPrev = tb - 0.01;
        var vPrev = 0.5 * xPrev + 0.25 * tPrev;
        Assert.True(Fields.MaxAbs(pair.Target, xPrev - (tPrev - tgtb) * vPrev) < 1e-15);
        Assert.Throws<ArgumentException>(() => new VelocityMatchingLoss(DistillationMode.ConsistencyModel));
    }

    [Fact]
    public void ShapesAreValidated()
    {
        using var scope = torch.NewDisposeScope();
        var (x0, noise, t) = Data();
        var loss = new VelocityMatchingLoss();
        var ex = Assert.Throws<ArgumentException>(() => loss.ComputePair(Fields.Linear(1, 0), Fields.Linear(1, 0), x0, noise, t[..2], null));
        Assert.Contains("[3]", ex.Message);
        Assert.Throws<ArgumentException>(() => loss.ComputePair(Fields.Linear(1, 0), Fields.Linear(1, 0), x0, noise[..2], t, null));
        var bad = new DelegateFlowModel((x, tt, c) => x.Data[.., ..2]);
        Assert.Throws<ArgumentException>(() => loss.ComputePair(bad, Fields.Linear(1, 0), x0, noise, t, null));
    }
}
