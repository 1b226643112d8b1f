using MdtDist.Core.Evaluation;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Flow;

public class FlowPathTests
{
    [Fact]
    public void PathConversionsAreConsistent()
    {
        var path = RectifiedFlowPath.Trellis;
        var g = new Generator(5);
        using var x0 = torch.randn(new long[] { 3, 4, 2 }, dtype: ScalarType.Float64, generator: g);
        using var eps = torch.randn(new long[] { 3, 4, 2 }, dtype: ScalarType.Float64, generator: g);
        using var t = torch.tensor(new[] { 1.0, 0.37, 0.0 }, dtype: ScalarType.Float64);
        var lat = Latent.Dense(x0);
        using var xt = path.Interpolate(lat, eps, t);
        using var v = path.TargetVelocity(x0, eps);
        using var x0Back = path.PredictX0(lat.With(xt), t, v);
        using var epsBack = path.PredictNoise(lat.With(xt), t, v);
        Assert.True((x0Back - x0).abs().max().item<double>() < 1e-14);
        Assert.True((epsBack - eps).abs().max().item<double>() < 1e-14);
        // t = 1 is pure noise, t = 0 is data plus σ·ε.
        Assert.True((xt[0] - eps[0]).abs().max().item<double>() == 0);
        Assert.True((xt[2] - (x0[2] + 1e-5 * eps[2])).abs().max().item<double>() < 1e-15);
        Assert.Throws<ArgumentException>(() => new RectifiedFlowPath(1.0));
        Assert.Throws<ArgumentException>(() => new RectifiedFlowPath(-0.1));
    }

    [Fact]
    public void FlowMatchingLossIsZeroForTheConditionalTargetAndPositiveOtherwise()
    {
        var g = new Generator(11);
        using var x0 = torch.randn(new long[] { 4, 3 }, dtype: ScalarType.Float64, generator: g);
        using var eps = torch.randn(new long[] { 4, 3 }, dtype: ScalarType.Float64, generator: g);
        using var t = torch.tensor(new[] { 0.1, 0.5, 0.9, 1.0 }, dtype: ScalarType.Float64);
        var loss = new FlowMatchingLoss();
        // An oracle that knows x0 and ε returns the conditional target exactly.
        var oracle = new DelegateFlowModel((x, tt, c) => (1 - 1e-5) * eps - x0);
        var terms = loss.Compute(oracle, Latent.Dense(x0), null, t, eps);
        Assert.True(terms.Loss.item<double>() < 1e-28);
        // The zero model's loss is the mean of the squared target; per-sample values average to the total.
        var zero = new DelegateFlowModel((x, tt, c) => torch.zeros_like(x.Data));
        var t2 = loss.Compute(zero, Latent.Dense(x0), null, t, eps);
        using var target = (1 - 1e-5) * eps - x0;
        Assert.Equal(target.square().mean().item<double>(), t2.Loss.item<double>(), 12);
        Assert.Equal(t2.Loss.item<double>(), t2.PerSample.mean().item<double>(), 12);
        Assert.Throws<ArgumentException>(() => loss.Compute(zero, Latent.Dense(x0), null, torch.ones(3, dtype: ScalarType.Float64)));
        Assert.Throws<ArgumentException>(() => loss.Compute(zero, Latent.Dense(x0), null, torch.full(4, 1.5, dtype: ScalarType.Float64)));
    }

    [Fact]
    public void FlowMatchingLossTrainsASmallModelOnGaussianData()
    {
        // Gradient check through the public API: the loss decreases when an affine model is trained on it.
        var rng = new Generator(0);
        var lin = nn.Linear(3, 2, dtype: ScalarType.Float64);
        using (torch.no_grad())
            foreach (var p in lin.parameters()) p.copy_(torch.randn(p.shape, dtype: ScalarType.Float64, generator: rng) * 0.5);
        var model = new DelegateFlowModel((x, t, c) => lin.call(torch.cat(new[] { x.Data, t.unsqueeze(1) }, 1)));
        var opt = torch.optim.Adam(lin.parameters(), 0.05);
        var loss = new FlowMatchingLoss();
        var g = new Generator(2);
        double first = 0, last = 0;
        for (int i = 0; i < 200; i++)
        {
            using var scope = torch.NewDisposeScope();
            var x0 = torch.randn(new long[] { 256, 2 }, dtype: ScalarType.Float64, generator: g) * 0.5 + 1.0;
            var t = torch.rand(new long[] { 256 }, dtype: ScalarType.Float64, generator: g);
            opt.zero_grad();
            var terms = loss.Compute(model, Latent.Dense(x0), null, t, generator: g);
            terms.Loss.backward();
            opt.step();
            if (i == 0) first = terms.Loss.item<double>();
            last = terms.Loss.item<double>();
        }
        Assert.True(last < first * 0.6, $"loss {first} -> {last}");
    }

    [Fact]
    public void GaussianMixtureWithOneComponentMatchesTheSingleGaussianClosedForm()
    {
        var mix = new GaussianMixtureFlow(new double[,] { { 0.7, 0.7 } }, 0.4);
        var single = new GaussianFlow(0.7, 0.4);
        using var x = torch.randn(new long[] { 16, 2 }, dtype: ScalarType.Float64);
        using var t = torch.rand(new long[] { 16 }, dtype: ScalarType.Float64);
        using var a = mix.Velocity(Latent.Dense(x), t, null);
        using var b = single.Velocity(Latent.Dense(x), t, null);
        Assert.True((a - b).abs().max().item<double>() < 1e-12);
    }

    [Fact]
    public void ManyStepEulerOnTheMixtureReachesTheDataAndOneStepDoesNot()
    {
        var mix = GaussianMixtureFlow.Ring();
        var g = new Generator(3);
        using var data = mix.SampleData(2000, g, ScalarType.Float64);
        using var noise = torch.randn(new long[] { 2000, 2 }, dtype: ScalarType.Float64, generator: g);
        using var many = new EulerSolver().Sample(mix, Latent.Dense(noise), null, TimeGrid.Trellis(50, 3.0));
        using var one = new EulerSolver().Sample(mix, Latent.Dense(noise), null, TimeGrid.Trellis(1));
        using var data2 = mix.SampleData(2000, new Generator(4), ScalarType.Float64);
        double floor = SampleDistances.SlicedWasserstein(data2, data, 128, new Generator(1));
        double dMany = SampleDistances.SlicedWasserstein(many.Samples, data, 128, new Generator(1));
        double dOne = SampleDistances.SlicedWasserstein(one.Samples, data, 128, new Generator(1));
        Assert.True(dMany < 2 * floor + 0.05, $"50 steps: {dMany}, floor {floor}");
        Assert.True(dOne > 5 * dMany, $"1 step: {dOne}, 50 steps: {dMany}");
        // One step from t = 1 lands on the posterior-weighted mean of the means: inside the ring.
        Assert.True(one.Samples.norm(1).mean().item<double>() < 2.0);
    }

    [Fact]
    public void SlicedWassersteinIsZeroForIdenticalSetsAndSeesAShift()
    {
        using var a = torch.randn(new long[] { 500, 3 }, dtype: ScalarType.Float64);
        Assert.Equal(0.0, SampleDistances.SlicedWasserstein(a, a, 64, new Generator(1)), 12);
        using var b = a + torch.tensor(new[] { 1.0, 0, 0 }, dtype: ScalarType.Float64);
        // Projections u·e1 with u uniform on the sphere: E[(u·e1)²] = 1/3.
        Assert.InRange(SampleDistances.SlicedWasserstein(a, b, 4096, new Generator(1)), Math.Sqrt(1.0 / 3) * 0.93, Math.Sqrt(1.0 / 3) * 1.07);
        Assert.Throws<ArgumentException>(() => SampleDistances.SlicedWasserstein(a, torch.zeros(3, 2), 4));
    }
}
