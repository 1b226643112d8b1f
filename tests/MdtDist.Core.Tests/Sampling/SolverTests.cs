using MdtDist.TestSupport;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using MdtDist.Core.Tests.Flow;

namespace MdtDist.Core.Tests.Sampling;

public class SolverTests
{
    private static Tensor Noise(long n, long d = 2, int seed = 7)
    {
        var g = new Generator((ulong)seed);
        return torch.randn(new[] { n, d }, dtype: ScalarType.Float64, generator: g);
    }

    [Fact]
    public void EulerWithManyStepsReproducesGaussianDataMeanAndVariance()
    {
        var model = new GaussianFlow(mu: 1.5, s: 0.7);
        using var noise = Noise(20000);
        using var r = new EulerSolver().Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(400));
        double mean = r.Samples.mean().item<double>();
        double var = r.Samples.var().item<double>();
        Assert.InRange(mean, 1.5 - 0.02, 1.5 + 0.02);
        Assert.InRange(var, 0.49 * 0.96, 0.49 * 1.04);
        // And pathwise: Euler converges to the exact flow map.
        using var exact = model.Exact(noise, 1.0, 0.0);
        double err = (r.Samples - exact).abs().max().item<double>();
        // First-order: the error is ~C·h·|x| with h = 1/400; the max runs over 40000 draws (tails to 4.5σ).
        Assert.True(err < 2e-2, $"max pathwise error {err}");
    }

    [Fact]
    public void OneStepEulerFromNoiseGivesTheKnownBiasedResult()
    {
        // v(x, 1) = (1 − σ)x − μ, so one Euler step from t = 1 to 0 gives x0 = σ·x1 + μ: the mean, variance σ².
        var model = new GaussianFlow(mu: -0.8, s: 2.0);
        using var noise = Noise(64);
        using var r = new EulerSolver().Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(1));
        using var expected = RectifiedFlowPath.TrellisSigmaMin * noise + (-0.8);
        Assert.True((r.Samples - expected).abs().max().item<double>() < 1e-14);
        Assert.Equal(1, r.Evaluations);
    }

    private static double Error(FlowSolver solver, GaussianFlow model, Tensor noise, int steps)
    {
        using var r = solver.Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(steps));
        using var exact = model.Exact(noise, 1.0, 0.0);
        return (r.Samples - exact).abs().max().item<double>();
    }

    [Fact]
    public void HeunConvergesAtSecondOrderAndEulerAtFirst()
    {
        var model = new GaussianFlow(mu: 0.5, s: 0.3);
        using var noise = Noise(16);
        double h16 = Error(new HeunSolver(), model, noise, 16), h32 = Error(new HeunSolver(), model, noise, 32), h64 = Error(new HeunSolver(), model, noise, 64);
        double e32 = Error(new EulerSolver(), model, noise, 32), e64 = Error(new EulerSolver(), model, noise, 64);
        var msg = $"heun {h16:E3} {h32:E3} {h64:E3}; euler {e32:E3} {e64:E3}";
        Assert.True(h16 / h32 is > 3.4 and < 4.6, msg);
        Assert.True(h32 / h64 is > 3.6 and < 4.4, msg);
        Assert.True(e32 / e64 is > 1.7 and < 2.3, msg);
        Assert.True(h64 < e64 / 10, msg);
    }

    [Fact]
    public void HeunCostsTwoEvaluationsPerStep()
    {
        var model = new GaussianFlow(0, 1);
        using var noise = Noise(4);
        using var r = new HeunSolver().Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(5));
        Assert.Equal(10, r.Evaluations);
        Assert.Equal(10, model.Calls);
    }

    [Fact]
    public void ReportsProgressTrajectoryAndX0Predictions()
    {
        var model = new GaussianFlow(mu: 2.0, s: 0.5);
        using var noise = Noise(8);
        var reports = new List<SamplerProgress>();
        var stepTimes = new List<double>();
        var x0Norms = new List<double>();
        var options = new SamplerOptions
        {
            RecordTrajectory = true,
            Progress = new SyncProgress<SamplerProgress>(reports.Add),
            OnStep = s => { stepTimes.Add(s.T); x0Norms.Add(s.PredX0.mean().item<double>()); },
        };
        var grid = TimeGrid.Trellis(4, 3.0);
        using var r = new EulerSolver().Sample(model, Latent.Dense(noise), null, grid, options);
        Assert.Equal(4, reports.Count);
        Assert.Equal(new[] { 1, 2, 3, 4 }, reports.Select(p => p.Step));
        Assert.All(reports, p => Assert.Equal(4, p.TotalSteps));
        Assert.Equal(grid.Take(4), stepTimes);
        Assert.Equal(4, r.PredXt.Count);
        Assert.Equal(4, r.PredX0.Count);
        Assert.True((r.PredXt[^1] - r.Samples).abs().max().item<double>() == 0);
        // x0 predictions of the exact Gaussian flow are near the data mean at every step.
        Assert.All(x0Norms, m => Assert.InRange(m, 1.0, 3.0));
        // pred_x_0 at step 0 equals the path formula (1 − σ)x − (σ + (1 − σ)t)·v at t = 1.
        using var t1 = torch.ones(8, dtype: ScalarType.Float64);
        using var v = model.Velocity(Latent.Dense(noise), t1, null);
        using var x0 = RectifiedFlowPath.Trellis.PredictX0(Latent.Dense(noise), t1, v);
        Assert.True((x0 - r.PredX0[0]).abs().max().item<double>() < 1e-15);
    }

    [Fact]
    public void CancellationStopsBetweenSteps()
    {
        var model = new GaussianFlow(0, 1);
        using var noise = Noise(4);
        using var cts = new CancellationTokenSource();
        int steps = 0;
        var options = new SamplerOptions { CancellationToken = cts.Token, OnStep = _ => { if (++steps == 3) cts.Cancel(); } };
        Assert.Throws<OperationCanceledException>(() => new EulerSolver().Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(10), options));
        Assert.Equal(3, steps);
    }

    [Fact]
    public void RejectsBadInput()
    {
        var model = new GaussianFlow(0, 1);
        using var noise = Noise(4);
        var solver = new EulerSolver();
        var e1 = Assert.Throws<ArgumentException>(() => TimeGrid.Trellis(0));
        Assert.Contains("steps", e1.Message);
        Assert.Throws<ArgumentException>(() => TimeGrid.Trellis(4, -1));
        Assert.Throws<ArgumentException>(() => TimeGrid.Explicit(1.0, 0.5, 0.7, 0.0));
        Assert.Throws<ArgumentException>(() => TimeGrid.Explicit(1.5, 0.0));
        Assert.Throws<ArgumentException>(() => TimeGrid.Explicit(1.0));
        using var bad = noise.clone();
        bad[1, 1] = torch.tensor(double.NaN);
        var e2 = Assert.Throws<ArgumentException>(() => solver.Sample(model, Latent.Dense(bad), null, TimeGrid.Trellis(2)));
        Assert.Contains("NaN", e2.Message);
        bad[1, 1] = torch.tensor(double.PositiveInfinity);
        Assert.Throws<ArgumentException>(() => solver.Sample(model, Latent.Dense(bad), null, TimeGrid.Trellis(2)));
        var wrong = new DelegateFlowModel((x, t, c) => torch.zeros(3, 3, dtype: ScalarType.Float64));
        var e3 = Assert.Throws<ArgumentException>(() => solver.Sample(wrong, Latent.Dense(noise), null, TimeGrid.Trellis(2)));
        Assert.Contains("[3, 3]", e3.Message);
        Assert.Contains("[4, 2]", e3.Message);
    }

    [Fact]
    public void SolversWorkOnRowLayoutLatentsLikeOnDense()
    {
        // The same data laid out as rows of two samples of different sizes gives the same Euler result.
        var model = new GaussianFlow(mu: 0.25, s: 1.3);
        using var rows = Noise(10, 3);
        using var idx = torch.tensor(new long[] { 0, 0, 0, 0, 1, 1, 1, 1, 1, 1 });
        var layout = new RowLayout(idx, 2);
        using var r1 = new EulerSolver().Sample(model, new Latent(rows, layout), null, TimeGrid.Trellis(6, 3.0));
        using var r2 = new EulerSolver().Sample(model, Latent.Dense(rows), null, TimeGrid.Trellis(6, 3.0));
        Assert.True((r1.Samples - r2.Samples).abs().max().item<double>() < 1e-15);
    }
}

