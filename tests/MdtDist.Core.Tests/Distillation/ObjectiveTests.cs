using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Distillation;

public class ObjectiveTests
{
    [Fact]
    public void VdSurrogateHasThePairGapAsValueAndGradientOnlyThroughVFake()
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(3);
        var x0 = Latent.Dense(torch.randn(new long[] { 4, 6 }, dtype: ScalarType.Float64, generator: g));
        var noise = torch.randn(new long[] { 4, 6 }, dtype: ScalarType.Float64, generator: g);
        var noiseFake = torch.randn(new long[] { 4, 6 }, dtype: ScalarType.Float64, generator: g);
        var t = torch.tensor(new[] { 0.2, 0.5, 0.7, 0.95 }, dtype: ScalarType.Float64);
        var theta = torch.tensor(0.6, dtype: ScalarType.Float64).requires_grad_(true);
        var student = new DelegateFlowModel((x, tt, c) => theta * x.Data + 0.3 * x.PerSample(tt) * torch.sin(x.Data));
        var vm = new VelocityMatchingLoss(DistillationMode.Discrete, dNorm: true, guidanceScale: 0);
        var vd = new VelocityDistillationLoss(vm, guidanceScale: 0);
        var terms = vd.Compute(student, Fields.Nonlinear(), x0.With(noiseFake), noise, t, null, weight: 1.5);

        // x_fake = ε' - v_S(ε', 1), σ_min ignored
        var vFake = 0.6 * noiseFake + 0.3 * torch.sin(noiseFake);
        Assert.True(Fields.MaxAbs(terms.VFake, vFake) < 1e-15);
        Assert.True(Fields.MaxAbs(terms.XFake, noiseFake - vFake) < 1e-15);
        // the pair is the VM pair around x_fake, computed without gradient
        var pairRef = vm.ComputePair(student, Fields.Nonlinear(), x0.With(noiseFake - vFake), noise, t, null);
        Assert.True(Fields.MaxAbs(terms.Pair.Target, pairRef.Target) < 1e-13);
        Assert.False(terms.Pair.Prediction.requires_grad);
        var gap = (pairRef.Prediction - pairRef.Target).detach();
        Assert.Equal((1.5 * gap.square()).mean().item<double>(), terms.Loss.item<double>(), 13);

        terms.Loss.backward();
        // d/dθ mean(λ (gap + v_fake - sg v_fake)^2) = mean(2λ gap ∂v_fake/∂θ) = mean(2λ gap ε')
        var expected = (2 * 1.5 * gap * noiseFake).mean().item<double>();
        Assert.Equal(expected, theta.grad!.item<double>(), 12);
    }

    [Fact]
    public void ObjectiveDrawsInTheReferenceOrderAndSumsTheTerms()
    {
        using var scope = torch.NewDisposeScope();
        using var gData = new Generator(11);
        var x0 = Latent.Dense(torch.randn(new long[] { 3, 2, 4 }, dtype: ScalarType.Float64, generator: gData));
        var objective = MdtDistObjective.Create(new MdtDistSettings { GuidanceVm = 0, GuidanceVd = 0, LambdaVm = 1.0, LambdaVd = 0.5 });

        using var g1 = new Generator(5);
        var draws = objective.Draw(x0, g1);
        using var g2 = new Generator(5);
        var noise = torch.randn(new long[] { 3, 2, 4 }, dtype: ScalarType.Float64, generator: g2);
        var raw = torch.randn(new long[] { 3 }, dtype: ScalarType.Float64, generator: g2);
        var fake = torch.randn(new long[] { 3, 2, 4 }, dtype: ScalarType.Float64, generator: g2);
        Assert.True(Fields.MaxAbs(draws.Noise, noise) == 0);
        Assert.True(Fields.MaxAbs(draws.TRaw, raw) == 0);
        Assert.True(Fields.MaxAbs(draws.NoiseFake!, fake) == 0);

        var student = Fields.Nonlinear();
        var teacher = Fields.Linear(-0.9, 0.2);
        var terms = objective.Compute(student, teacher, x0, null, draws);
        var t = 0.01 + 1e-5 + (1 - (0.01 + 1e-5)) * torch.sigmoid(raw + 1.0);
        Assert.True(Fields.MaxAbs(terms.T, t) < 1e-15);
        var vmTerms = objective.VmLoss.Compute(student, teacher, x0, noise, t, null);
        var vdTerms = objective.VdLoss.Compute(student, teacher, x0.With(fake), noise, t, null, weight: 0.5);
        Assert.True(Fields.MaxAbs(terms.Elementwise, vmTerms.Elementwise + vdTerms.Elementwise) < 1e-15);
        Assert.Equal((vmTerms.Elementwise + vdTerms.Elementwise).mean().item<double>(), terms.Loss.item<double>(), 15);
        Assert.True(Fields.MaxAbs(terms.PerSample, terms.Elementwise.reshape(3, -1).mean(new long[] { 1 })) < 1e-15);

        // λ_VD = 0: no VD term and no third draw
        var vmOnly = MdtDistObjective.Create(new MdtDistSettings { LambdaVd = 0 });
        using var g3 = new Generator(5);
        Assert.Null(vmOnly.Draw(x0, g3).NoiseFake);
        Assert.Throws<ArgumentException>(() => new MdtDistObjective(new VelocityMatchingLoss(), 0, 0));
    }
}

/// <summary>
/// The reference's sparse trainer never computes dv/dt in its discrete branch; ours shares one implementation for every
/// layout. These tests run the VM target on a row (sparse-like) latent and compare it with the dense formula.
/// </summary>
public class SparseLayoutVmTests
{
    [Fact]
    public void DiscreteVmTargetOnRowsEqualsTheDenseTargetOnTheSameData()
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(21);
        long b = 2, l = 5, c = 3;
        var dense = torch.randn(new[] { b, l, c }, dtype: ScalarType.Float64, generator: g);
        var noiseDense = torch.randn(new[] { b, l, c }, dtype: ScalarType.Float64, generator: g);
        var t = torch.tensor(new[] { 0.83, 0.41 }, dtype: ScalarType.Float64);

        // Rows interleaved across samples (row i belongs to sample i % 2), so the layout's sample index really matters.
        var order = Enumerable.Range(0, (int)(b * l)).Select(i => (long)((i % 2) * l + i / 2)).ToArray();
        var perm = torch.tensor(order);
        var rowsData = dense.reshape(b * l, c).index_select(0, perm);
        var rowsNoise = noiseDense.reshape(b * l, c).index_select(0, perm);
        var sampleIndex = torch.tensor(order.Select(o => o / l).ToArray());
        var rows = new Latent(rowsData, new RowLayout(sampleIndex, b));

        var loss = new VelocityMatchingLoss(DistillationMode.Discrete, interval: 0.01, dNorm: true, guidanceScale: 40);
        var cond = torch.tensor(new[] { 0.3, -0.7 }, dtype: ScalarType.Float64);
        var student = Fields.Nonlinear();
        var teacher = Fields.Linear(-0.8, 0.4, g: 1.5);
        var pd = loss.ComputePair(student, teacher, Latent.Dense(dense), noiseDense, t, cond);
        var pr = loss.ComputePair(student, teacher, rows, rowsNoise, t, cond);

        foreach (var name in new[] { "x_t", "v_teacher", "v_pred", "x_prev", "v_prev", "dv_dt", "dv_dt_norm", "v_tgt" })
        {
            var denseAsRows = pd[name].reshape(b * l, c).index_select(0, perm);
            double err = Fields.MaxAbs(denseAsRows, pr[name]);
            Assert.True(err < 1e-14, $"{name}: rows vs dense differ by {err}");
        }
        // dv/dt is really there (the reference's sparse branch would have none) and normalised per sample:
        var dv = pd["dv_dt"];
        var perSampleNorm = dv.reshape(b, -1).square().sum(1).sqrt();
        Assert.True(perSampleNorm.min().item<double>() > 0.5, "dv/dt must be non-trivial");
        var rawNorm = pd["dv_dt_norm"].reshape(b, -1)[.., 0];
        Assert.True(Fields.MaxAbs(perSampleNorm, rawNorm / (rawNorm + 0.1)) < 1e-14);
        // and v_tgt is the dense formula v_T - t·dv/dt
        Assert.True(Fields.MaxAbs(pd.Target, pd["v_teacher"] - t.reshape(-1, 1, 1) * dv) < 1e-15);
    }

    [Fact]
    public void RowDNormUsesOneNormOverAllRowsAndChannelsOfASample()
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(4);
        var sampleIndex = torch.tensor(new long[] { 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1 });
        var layout = new RowLayout(sampleIndex, 2);
        var x0 = new Latent(torch.randn(new long[] { 11, 8 }, dtype: ScalarType.Float64, generator: g), layout);
        var noise = torch.randn(new long[] { 11, 8 }, dtype: ScalarType.Float64, generator: g);
        var t = torch.tensor(new[] { 0.5, 0.9 }, dtype: ScalarType.Float64);
        var raw = new VelocityMatchingLoss(dNorm: false, guidanceScale: 0).ComputePair(Fields.Nonlinear(), Fields.Linear(1, 1), x0, noise, t, null);
        var normed = new VelocityMatchingLoss(dNorm: true, guidanceScale: 0).ComputePair(Fields.Nonlinear(), Fields.Linear(1, 1), x0, noise, t, null);
        var d = raw["dv_dt"];
        var n0 = d[..4].square().sum().sqrt();
        var n1 = d[4..].square().sum().sqrt();
        Assert.True(Fields.MaxAbs(normed["dv_dt"][..4], d[..4] / (n0 + 0.1)) < 1e-15);
        Assert.True(Fields.MaxAbs(normed["dv_dt"][4..], d[4..] / (n1 + 0.1)) < 1e-15);
        // sparse terms are means over all rows × channels (bigger samples weigh more), per-sample means are per sample
        var terms = new VelocityMatchingLoss(dNorm: true, guidanceScale: 0).Compute(Fields.Nonlinear(), Fields.Linear(1, 1), x0, noise, t, null);
        Assert.Equal(terms.Elementwise.mean().item<double>(), terms.Loss.item<double>(), 15);
        Assert.Equal(terms.Elementwise[..4].mean().item<double>(), terms.PerSample[0].item<double>(), 15);
    }
}

/// <summary>The defaults of <see cref="MdtDist.Core.Distillation.MdtDistSettings"/> are MDT-dist's released configuration,
/// compared with literal values from Zanue/MDT-dist's <c>src/configs/ss_flow_img_dit_L_16l8_fp16.json</c> and
/// <c>slat_flow_img_dit_L_64l8p2_fp16.json</c> (trainer args) and its trainers (d-norm constant).</summary>
public class MdtDistSettingsDefaultsTests
{
    [Fact]
    public void DefaultsAreTheReleasedConfigs()
    {
        var s = new MdtDist.Core.Distillation.MdtDistSettings();
        Assert.Equal(MdtDist.Core.Distillation.DistillationMode.Discrete, s.Mode);   // "distill_type": "discrete"
        Assert.Equal(0.01, s.Interval);                                               // "distill_interval": 0.01
        Assert.Equal(1e-5, s.SigmaMin);                                               // "sigma_min": 1e-5
        Assert.Equal(40.0, s.GuidanceVm);                                             // "cfg_teacher_vm": 40
        Assert.Equal(100.0, s.GuidanceVd);                                            // "cfg_teacher_vd": 100
        Assert.Equal(1, s.Multiphase);                                                // "multiphase": 1
        Assert.Equal(1.0, s.LambdaVm);                                                // "lambda_vm": 1
        Assert.Equal(1.0, s.LambdaVd);                                                // "lambda_vd": 1
        Assert.True(s.DNorm);                                                         // "d_norm": true
        Assert.Equal(0.1, s.DNormConstant);                                           // dv_dt / (||dv_dt|| + 0.1)
        var ln = Assert.IsType<MdtDist.Core.Flow.LogitNormalTimeSampler>(s.TimeSampler); // "t_schedule": logitNormal
        Assert.Equal(1.0, ln.Mean);                                                   //   "mean": 1.0
        Assert.Equal(1.0, ln.Std);                                                    //   "std": 1.0
    }
}
