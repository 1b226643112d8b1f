using System.Diagnostics;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Core.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

public sealed class FlowMatchingTrainerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "mdtdist-fm-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static readonly double[,] Means = { { 1.0, 1.0 }, { -1.0, 1.0 }, { 1.0, -1.0 }, { -1.0, -1.0 } };

    private static IDistillationDataSource MixtureData(GaussianMixtureFlow mog, long batch, bool conditional = false) => new DelegateDataSource(step =>
    {
        using var g = new Generator((ulong)(20_000 + step));
        var x = mog.SampleData(batch, g);
        // a toy condition: the sign of x (2 features), so condition dropout has something to drop
        return new DistillationBatch(Latent.Dense(x), conditional ? x.sign() : null);
    });

    /// <summary>
    /// A teacher trained from data with the flow-matching trainer (TRELLIS's recipe: logit-normal(1, 1) times, AdamW,
    /// EMA, adaptive clipping) samples the 2-D mixture of <see cref="MogDistillationTests"/> with 25 Euler steps about
    /// as well as the exact marginal velocity does.
    /// 1000 steps of 256 samples, AdamW 3e-3 decaying linearly, EMA 0.99.
    /// Measured when written (float32, 1 thread, 2-core machine, ~15 s): EMA model 25-step SW1 0.076, exact velocity
    /// 25-step 0.037, the untrained network 0.27, two-sample floor 0.028. The logit-normal(1, 1) schedule spends few
    /// samples near t = 0, so the clusters (std 0.2) stay a little blurred after so short a run. The bound 0.1 leaves
    /// room for libtorch version noise; a model that has not learnt the four modes stays near the untrained 0.27
    /// (the second assertion keeps the test informative).
    /// </summary>
    private const int Steps = 1000;

    [Fact]
    public void TeacherTrainedFromDataSamplesTheMixtureLikeTheExactVelocity()
    {
        int threads = torch.get_num_threads();
        torch.set_num_threads(1);
        try
        {
            var watch = Stopwatch.StartNew();
            var mog = new GaussianMixtureFlow(Means, 0.2);
            var model = new MlpFlow(2, 64, 3, seed: 11);
            var options = new FlowMatchingTrainerOptions
            {
                LearningRate = 3e-3, LearningRateSchedule = s => Math.Max(0.02, 1.0 - s / (double)Steps), Seed = 5, EmaRates = new[] { 0.99 }, PUncond = 0, LogEvery = 0,
                Clipping = new GradientClipping(MaxNorm: 10.0),
            };
            using var trainer = new FlowMatchingTrainer(model, options);
            var last = trainer.Train(MixtureData(mog, 256), Steps)!;
            Assert.Equal(0, trainer.SkippedSteps);
            var ema = new MlpFlow(2, 64, 3, seed: 12);
            trainer.CopyEmaTo(ema.Module);

            using var scope = torch.NewDisposeScope();
            using var gEval = new Generator(77);
            var reference = mog.SampleData(4096, gEval);
            var floorSet = mog.SampleData(4096, gEval);
            var noise = Latent.Dense(torch.randn(new long[] { 4096, 2 }, generator: gEval));
            Tensor Sample(IFlowModel m)
            {
                using var r = new EulerSolver().Sample(m, noise, null, TimeGrid.Trellis(25));
                return r.Samples.detach().clone();
            }
            double trained = MogDistillationTests.SlicedW1(reference, Sample(ema));
            double exact = MogDistillationTests.SlicedW1(reference, Sample(mog));
            double untrained = MogDistillationTests.SlicedW1(reference, Sample(new MlpFlow(2, 64, 3, seed: 11)));
            double floor = MogDistillationTests.SlicedW1(reference, floorSet);
            output.WriteLine($"SW1 to data (25 Euler steps): trained EMA {trained:F4}, exact velocity {exact:F4}, untrained {untrained:F4}, floor {floor:F4}; " +
                             $"last loss {last.Loss:G4}; {watch.Elapsed.TotalSeconds:F1} s");
            Assert.True(trained <= 0.1, $"trained teacher SW1 {trained:F4} > 0.1 (exact velocity {exact:F4})");
            Assert.True(untrained > 2.5 * trained, $"the untrained network ({untrained:F4}) must be far off the trained one ({trained:F4})");
        }
        finally
        {
            torch.set_num_threads(threads);
        }
    }

    private static FlowMatchingTrainerOptions SmallOptions(string? dir = null) => new()
    {
        LearningRate = 1e-3, Seed = 3, EmaRates = new[] { 0.9, 0.99 }, PUncond = 0.3, BatchSplit = 2, LogEvery = 0,
        Clipping = new GradientClipping(MaxNorm: 1.0, Percentile: 90, BufferSize: 3), CheckpointDirectory = dir,
    };

    private sealed class CondMlp(int seed) : IFlowNetwork
    {
        private readonly MlpFlow _inner = new(4, 16, 2, (ulong)seed);
        public nn.Module Module => _inner.Module;

        // the condition (2 features) is appended to x; the velocity is the first 2 outputs
        public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
        {
            var c = condition ?? torch.zeros_like(x.Data);
            return _inner.Velocity(Latent.Dense(torch.cat(new[] { x.Data, c.to(x.Data.dtype) }, 1)), t, null).narrow(1, 0, 2);
        }
    }

    [Fact]
    public void StoppedAndResumedRunIsBitIdenticalToAnUninterruptedRun()
    {
        var mog = new GaussianMixtureFlow(Means, 0.2);
        var data = MixtureData(mog, 16, conditional: true);
        var aModel = new CondMlp(1);
        using var a = new FlowMatchingTrainer(aModel, SmallOptions());
        a.Train(data, 8);

        var dir = Path.Combine(_dir, "resume");
        using (var b = new FlowMatchingTrainer(new CondMlp(1), SmallOptions(dir)))
        {
            using var cts = new CancellationTokenSource();
            var progress = new SyncProgress<TrainingProgress>(p => { if (p.Step == 3) cts.Cancel(); });
            Assert.Throws<OperationCanceledException>(() => b.Train(data, 8, progress, cts.Token));
        }
        var cModel = new CondMlp(2); // other initial weights: everything must come from the checkpoint
        using var c = new FlowMatchingTrainer(cModel, SmallOptions(dir));
        Assert.True(c.TryResume());
        Assert.Equal(3, c.Step);
        c.Train(data, 8);
        Assert.True(ParamUtil.BitEqual(ParamUtil.Snapshot(aModel.Module), ParamUtil.Snapshot(cModel.Module)), "weights differ after resume");
        for (int r = 0; r < 2; r++)
            Assert.All(a.EmaParameters(r), kv => Assert.True(kv.Value.Equals(c.EmaParameters(r)[kv.Key]), $"EMA {r} {kv.Key} differs"));
        Assert.Equal(a.GradClipper!.RecentNorms, c.GradClipper!.RecentNorms);
    }

    [Fact]
    public void ConditionDropoutReplacesWholeSamplesWithTheNegativeCondition()
    {
        using var scope = torch.NewDisposeScope();
        var cond = torch.arange(1, 13, dtype: ScalarType.Float64).reshape(4, 3);
        var dropped = FlowMatchingTrainer.DropCondition(cond, null, torch.tensor(new[] { false, true, false, true }));
        Assert.Equal(new double[] { 1, 2, 3, 0, 0, 0, 7, 8, 9, 0, 0, 0 }, dropped.reshape(-1).data<double>().ToArray());
        var neg = torch.full(new long[] { 1, 3 }, -1.0, dtype: ScalarType.Float64);
        var shared = FlowMatchingTrainer.DropCondition(cond.narrow(0, 0, 1), neg, torch.tensor(new[] { true, false }));
        Assert.Equal(new double[] { -1, -1, -1, 1, 2, 3 }, shared.reshape(-1).data<double>().ToArray());
        Assert.Throws<ArgumentException>(() => FlowMatchingTrainer.DropCondition(cond, null, torch.tensor(new[] { true, false })));

        // through the trainer: with p_uncond the model sees the negative condition for about p of the samples
        var zeroRows = new List<long>();
        var lin = nn.Linear(2, 2);
        using var trainer = new FlowMatchingTrainer(new FlowNetwork(lin, (x, t, c) =>
        {
            zeroRows.Add(c!.abs().sum(1).eq(0).sum().item<long>());
            return lin.forward(x.Data);
        }), new FlowMatchingTrainerOptions { PUncond = 0.25, Seed = 9, LogEvery = 0 });
        using var g = new Generator(1);
        var batch = new DistillationBatch(Latent.Dense(torch.randn(new long[] { 4000, 2 }, generator: g)), torch.ones(4000, 2));
        trainer.TrainStep(batch);
        // Binomial(4000, 0.25): mean 1000, sd 27; 6 sd either side
        Assert.InRange(Assert.Single(zeroRows), 1000 - 165, 1000 + 165);
    }
}
