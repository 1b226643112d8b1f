using MdtDist.TestSupport;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

public sealed class MdtDistillerTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "mdtdist-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private const int Dim = 2;

    private static IDistillationDataSource Data(long batch = 8, long nanStep = -1) => new DelegateDataSource(step =>
    {
        using var g = new Generator((ulong)(1000 + step));
        var centers = torch.tensor(new float[] { 1.5f, 1.5f, -1.5f, -1.5f }).reshape(2, 2);
        var idx = torch.randint(0, 2, new[] { batch }, generator: g);
        var x0 = centers.index_select(0, idx) + 0.2f * torch.randn(new[] { batch, (long)Dim }, generator: g);
        if (step == nanStep) x0[0, 0] = torch.tensor(float.NaN);
        return new DistillationBatch(Latent.Dense(x0));
    });

    private static MdtDistObjective Objective() => MdtDistObjective.Create(new MdtDistSettings { DNorm = false, GuidanceVm = 0, GuidanceVd = 0 });

    private static MdtDistillerOptions Options(string? dir = null) => new()
    {
        LearningRate = 1e-3,
        Seed = 42,
        EmaRates = new[] { 0.9, 0.99 },
        Clipping = new GradientClipping(MaxNorm: 1.0, Percentile: 90, BufferSize: 3),
        BatchSplit = 2,
        CheckpointDirectory = dir,
        LogEvery = 0,
    };

    private static MdtDistiller Create(MdtDistillerOptions options, Func<MlpFlow>? studentFactory = null)
    {
        var teacher = new MlpFlow(Dim, 16, 2, seed: 7);
        return MdtDistiller.FromTeacher(teacher, studentFactory ?? (() => new MlpFlow(Dim, 16, 2, seed: 99)), Objective(), options);
    }

    [Fact]
    public void StudentStartsAsADeepCopyOfTheFrozenTeacher()
    {
        var teacher = new MlpFlow(Dim, 16, 2, seed: 7);
        var student = new MlpFlow(Dim, 16, 2, seed: 99);
        using var d = MdtDistiller.FromTeacher(teacher, () => student, Objective(), Options());
        var ts = teacher.Module.state_dict();
        var ss = student.Module.state_dict();
        Assert.True(ParamUtil.BitEqual(ts, ss));
        Assert.All(teacher.Module.parameters(), p => Assert.False(p.requires_grad));
        var before = ParamUtil.Snapshot(teacher.Module);
        d.Train(Data(), 2);
        Assert.True(ParamUtil.BitEqual(before, ParamUtil.Snapshot(teacher.Module)), "the teacher must not change");
        Assert.False(ParamUtil.BitEqual(before, ParamUtil.Snapshot(student.Module)), "the student must change");
        Assert.Throws<ArgumentException>(() => MdtDistiller.FromTeacher(teacher, () => teacher, Objective(), Options()));
    }

    [Fact]
    public void StoppedAndResumedRunIsBitIdenticalToAnUninterruptedRun()
    {
        const long total = 9;
        // uninterrupted
        using var a = Create(Options());
        a.Train(Data(), total);
        var aParams = ParamUtil.Snapshot(a.Student.Module);

        // stopped after step 4 (cancellation writes a checkpoint), then a brand-new distiller resumes
        var dir = Path.Combine(_dir, "resume");
        using var cts = new CancellationTokenSource();
        using (var b = Create(Options(dir)))
        {
            var progress = new SyncProgress<DistillationProgress>(p => { if (p.Step == 4) cts.Cancel(); });
            Assert.Throws<OperationCanceledException>(() => b.Train(Data(), total, progress, cts.Token));
            Assert.Equal(4, b.Step);
        }
        Assert.EndsWith("step-000000004", CheckpointStore.FindLatest(dir));
        using var c = Create(Options(dir));
        Assert.True(c.TryResume());
        Assert.Equal(4, c.Step);
        c.Train(Data(), total);
        Assert.Equal(total, c.Step);

        Assert.True(ParamUtil.BitEqual(aParams, ParamUtil.Snapshot(c.Student.Module)), "student weights differ after resume");
        for (int r = 0; r < 2; r++)
        {
            var ea = a.EmaParameters(r);
            var ec = c.EmaParameters(r);
            Assert.All(ea, kv => Assert.True(kv.Value.Equals(ec[kv.Key]), $"EMA {r} {kv.Key} differs"));
        }
        Assert.Equal(a.GradClipper!.RecentNorms, c.GradClipper!.RecentNorms);
        Assert.Equal(a.GradClipper.CurrentMaxNorm, c.GradClipper.CurrentMaxNorm);
        // sanity: the run really trained and the clipper reached its percentile regime
        Assert.Equal(3, a.GradClipper.BufferLength);
    }

    [Fact]
    public void NonFiniteLossStepIsSkippedCountedAndTheRunContinues()
    {
        using var d = Create(Options());
        var snapshots = new List<Dictionary<string, Tensor>>();
        var reports = new List<DistillationProgress>();
        var progress = new SyncProgress<DistillationProgress>(p => { reports.Add(p); snapshots.Add(ParamUtil.Snapshot(d.Student.Module)); });
        d.Train(Data(nanStep: 2), 5, progress);
        Assert.Equal(1, d.SkippedSteps);
        Assert.Equal(5, d.Step);
        Assert.True(reports[2].Skipped);
        Assert.True(double.IsNaN(reports[2].Loss));
        Assert.Null(reports[2].GradNorm);
        Assert.False(reports[1].Skipped);
        Assert.True(ParamUtil.BitEqual(snapshots[1], snapshots[2]), "a skipped step must not change the weights");
        Assert.False(ParamUtil.BitEqual(snapshots[2], snapshots[3]), "training continues after a skipped step");
        Assert.All(snapshots[4].Values, t => Assert.True(t.isfinite().all().item<bool>()));
        // the clipper only saw the 4 finite steps (buffer of 3 is full, position 4 % 3)
        Assert.Equal(1, d.GradClipper!.BufferPosition);
    }

    [Fact]
    public void NonFiniteGradientStepIsSkipped()
    {
        MlpFlow? student = null;
        using var d = Create(Options(), () => student = new MlpFlow(Dim, 16, 2, seed: 99));
        d.TrainStep(Data().GetBatch(0));
        var before = ParamUtil.Snapshot(student!.Module);
        var ema = d.EmaParameters(0).ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        student.PoisonGradient = true;
        var r = d.TrainStep(Data().GetBatch(1));
        Assert.True(double.IsFinite(r.Loss) && r.Skipped, "finite loss, NaN gradient: skipped");
        Assert.Equal(1, d.SkippedSteps);
        Assert.True(ParamUtil.BitEqual(before, ParamUtil.Snapshot(student.Module)));
        // TRELLIS's update_ema runs after a skipped step too: the EMA moves toward the unchanged weights (rate 0.9)
        var masters = d.MasterParameters;
        var names = ema.Keys.ToList();
        for (int i = 0; i < names.Count; i++)
            Assert.True((d.EmaParameters(0)[names[i]] - (ema[names[i]] * 0.9 + masters[i] * (1 - 0.9))).abs().max().item<float>() < 1e-6f, $"EMA of {names[i]} after the skipped step");
        student.PoisonGradient = false;
        var r2 = d.TrainStep(Data().GetBatch(2));
        Assert.False(r2.Skipped);
        Assert.False(ParamUtil.BitEqual(before, ParamUtil.Snapshot(student.Module)));
    }

    [Fact]
    public void EmaOnSkippedStepCanBeSwitchedOff()
    {
        MlpFlow? student = null;
        using var d = Create(Options() with { EmaOnSkippedStep = false }, () => student = new MlpFlow(Dim, 16, 2, seed: 99));
        d.TrainStep(Data().GetBatch(0));
        var ema = d.EmaParameters(1).ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        student!.PoisonGradient = true;
        Assert.True(d.TrainStep(Data().GetBatch(1)).Skipped);
        Assert.True(ParamUtil.BitEqual(ema, d.EmaParameters(1)));
    }

    [Fact]
    public void SteppingByHandWithGivenDrawsIsTheSameUpdateAsTrain()
    {
        // Train draws ε, t and ε' per micro-batch from the distiller's generator; drawing the same values by hand and
        // passing them to TrainStep(microBatches, draws) must give bit-identical weights, EMAs and clipper state.
        using var a = Create(Options());
        a.Train(Data(), 4);
        using var b = Create(Options());
        for (long s = 0; s < 4; s++)
        {
            var parts = Data().GetBatch(s).Split(2);
            var draws = parts.Select(mb => b.Objective.Draw(mb.X0, b.Generator)).ToList();
            var r = b.TrainStep(parts, draws);
            Assert.False(r.Skipped);
        }
        Assert.True(ParamUtil.BitEqual(ParamUtil.Snapshot(a.Student.Module), ParamUtil.Snapshot(b.Student.Module)));
        Assert.All(a.EmaParameters(1), kv => Assert.True(kv.Value.Equals(b.EmaParameters(1)[kv.Key])));
        Assert.Equal(a.GradClipper!.RecentNorms, b.GradClipper!.RecentNorms);
        Assert.Throws<ArgumentException>(() => b.TrainStep(Data().GetBatch(5).Split(2), new[] { b.Objective.Draw(Data().GetBatch(5).X0, b.Generator) }));
    }

    [Fact]
    public void DynamicLossScaleRunsInAnyDtypeAndIsRestoredOnResume()
    {
        // TRELLIS's rule in float32: +growth per good step, -1 per skipped step; the scaled-then-unscaled gradients
        // (a power of two) give the same update as an unscaled run up to float32 rounding of the backward pass.
        var dir = Path.Combine(_dir, "scale");
        MlpFlow? student = null;
        var options = Options(dir) with { LossScaling = LossScaling.Dynamic, InitialLogLossScale = 10 };
        using var d = Create(options, () => student = new MlpFlow(Dim, 16, 2, seed: 99));
        using var plain = Create(Options());
        d.Train(Data(), 2);
        plain.Train(Data(), 2);
        Assert.Equal(10.002, d.LogLossScale, 12);
        Assert.Equal(0.0, plain.LogLossScale);
        var ds = ParamUtil.Snapshot(d.Student.Module);
        var ps = ParamUtil.Snapshot(plain.Student.Module);
        // 2 AdamW steps of lr 1e-3 move each weight by <= 2e-3; rounding differences in the gradient move the Adam
        // direction by far less than 1e-5 of that (float32 relative precision 6e-8, amplified by Adam's normalisation).
        Assert.All(ds, kv => Assert.True((kv.Value - ps[kv.Key]).abs().max().item<float>() < 1e-5f, kv.Key));
        student!.PoisonGradient = true;
        Assert.True(d.TrainStep(Data().GetBatch(2)).Skipped);
        Assert.Equal(9.002, d.LogLossScale, 12);
        student.PoisonGradient = false;
        d.SaveCheckpoint(dir);
        using var e = Create(options);
        Assert.True(e.TryResume());
        Assert.Equal(d.LogLossScale, e.LogLossScale);
        var rd = d.TrainStep(Data().GetBatch(3));
        var re = e.TrainStep(Data().GetBatch(3));
        Assert.Equal(9.003, re.LogLossScale, 12);
        Assert.Equal(rd.Loss, re.Loss);
        Assert.True(ParamUtil.BitEqual(ParamUtil.Snapshot(d.Student.Module), ParamUtil.Snapshot(e.Student.Module)));
    }

    [Fact]
    public void CrashWhileWritingACheckpointLeavesThePreviousOneLoadable()
    {
        var dir = Path.Combine(_dir, "crash");
        using var d = Create(Options());
        d.Train(Data(), 3);
        var saved = ParamUtil.Snapshot(d.Student.Module);
        var p3 = d.SaveCheckpoint(dir);
        d.Train(Data(), 5);
        int files = 0;
        d.CheckpointFileWritten = name => { if (++files == 2) throw new IOException($"simulated crash after writing {name}"); };
        Assert.Throws<IOException>(() => d.SaveCheckpoint(dir));
        Assert.Contains(Directory.GetDirectories(dir), p => Path.GetFileName(p).StartsWith(".tmp-step-000000005", StringComparison.Ordinal));
        Assert.False(Directory.Exists(Path.Combine(dir, "step-000000005")));

        Assert.Equal(p3, CheckpointStore.FindLatest(dir));
        CheckpointStore.Verify(p3);
        using (var e = Create(Options()))
        {
            Assert.True(e.TryResume(dir));
            Assert.Equal(3, e.Step);
            Assert.True(ParamUtil.BitEqual(saved, ParamUtil.Snapshot(e.Student.Module)));
        }

        // the next successful write supersedes it and cleans up the leftover
        d.CheckpointFileWritten = null;
        var p5 = d.SaveCheckpoint(dir);
        Assert.Equal(p5, CheckpointStore.FindLatest(dir));
        Assert.DoesNotContain(Directory.GetDirectories(dir), p => Path.GetFileName(p).StartsWith(".tmp-", StringComparison.Ordinal));

        // a checkpoint whose file was damaged after the fact is detected
        var student = Path.Combine(p5, "student.safetensors");
        var bytes = File.ReadAllBytes(student);
        bytes[^1] ^= 0xFF;
        File.WriteAllBytes(student, bytes);
        Assert.Throws<InvalidDataException>(() => CheckpointStore.Verify(p5));
        using var f = Create(Options());
        Assert.Throws<InvalidDataException>(() => f.LoadCheckpoint(p5));
    }

    [Fact]
    public void PeriodicCheckpointsArePrunedToTheConfiguredCount()
    {
        var dir = Path.Combine(_dir, "prune");
        using var d = Create(Options(dir) with { CheckpointEvery = 2, KeepCheckpoints = 2 });
        d.Train(Data(), 7);
        var names = CheckpointStore.List(dir).Select(Path.GetFileName).ToArray();
        Assert.Equal(new[] { "step-000000006", "step-000000007" }, names);
    }

    [Fact]
    public void LogsTimeBinnedLossesAndWarnsAboutSkippedSteps()
    {
        var logger = new ListLogger();
        var teacher = new MlpFlow(Dim, 16, 2, seed: 7);
        using var d = MdtDistiller.FromTeacher(teacher, () => new MlpFlow(Dim, 16, 2, seed: 99), Objective(), Options() with { LogEvery = 2, BatchSplit = 1 }, logger);
        var reports = new List<DistillationProgress>();
        d.Train(Data(batch: 64, nanStep: 2), 4, new SyncProgress<DistillationProgress>(reports.Add));
        var info = logger.Entries.Where(e => e.Level == Microsoft.Extensions.Logging.LogLevel.Information && e.Message.StartsWith("Step ", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, info.Count); // steps 2 and 4
        Assert.Contains("bin_", info[1].Message);
        Assert.Single(logger.Entries, e => e.Level == Microsoft.Extensions.Logging.LogLevel.Warning && e.Message.Contains("skipped"));
        // the bins of a report are the per-sample loss means of its samples, grouped by t (64 samples, logit-normal(1,1) times)
        var bins = reports[0].TimeBinLoss;
        Assert.True(bins.Count >= 4 && bins.Keys.All(k => k is >= 0 and < 10));
        Assert.All(bins.Values, v => Assert.True(v > 0 && double.IsFinite(v)));
    }

    [Theory]
    [InlineData(DistillationMode.Continuous)]
    [InlineData(DistillationMode.ConsistencyModel)]
    public void OtherModesTrainThroughTheSameDistiller(DistillationMode mode)
    {
        var objective = MdtDistObjective.Create(new MdtDistSettings { Mode = mode, Multiphase = 2, GuidanceVm = 0, GuidanceVd = 0 });
        var teacher = new MlpFlow(Dim, 16, 2, seed: 7);
        MlpFlow? student = null;
        using var d = MdtDistiller.FromTeacher(teacher, () => student = new MlpFlow(Dim, 16, 2, seed: 99), objective, Options());
        var before = ParamUtil.Snapshot(student!.Module);
        var last = d.Train(Data(), 3)!;
        Assert.Equal(0, d.SkippedSteps);
        Assert.True(double.IsFinite(last.Loss) && last.LossVm is not null && last.LossVd is not null);
        Assert.False(ParamUtil.BitEqual(before, ParamUtil.Snapshot(student.Module)));
    }

    [Fact]
    public void EmaFollowsTrellisUpdateRule()
    {
        using var d = Create(Options() with { Clipping = null, BatchSplit = 1 });
        var p0 = d.MasterParameters.Select(p => p.detach().clone()).ToList();
        d.TrainStep(Data().GetBatch(0));
        var p1 = d.MasterParameters.Select(p => p.detach().clone()).ToList();
        var names = d.EmaParameters(0).Keys.ToList();
        for (int r = 0; r < 2; r++)
        {
            double rate = new[] { 0.9, 0.99 }[r];
            var ema = d.EmaParameters(r);
            for (int i = 0; i < p0.Count; i++)
            {
                var expected = p0[i] * rate + p1[i] * (1 - rate);
                Assert.True((ema[names[i]] - expected).abs().max().item<float>() < 1e-6f);
            }
        }
        var copy = new MlpFlow(Dim, 16, 2, seed: 5);
        d.CopyEmaTo(copy.Module, 1);
        Assert.True(copy.Module.named_parameters().All(kv => kv.parameter.Equals(d.EmaParameters(1)[kv.name])));
    }

    [Fact]
    public void Fp32MasterWeightsTrainALowPrecisionStudent()
    {
        foreach (var (low, logScale) in new[] { (ScalarType.BFloat16, 20.0), (ScalarType.Float16, 8.0) })
        {
            var teacher = new MlpFlow(Dim, 16, 2, seed: 7, paramDType: low);
            var student = new MlpFlow(Dim, 16, 2, seed: 99, paramDType: low);
            var options = Options() with { Precision = TrainingPrecision.Fp32MasterWeights, InitialLogLossScale = logScale };
            using var d = MdtDistiller.FromTeacher(teacher, () => student, Objective(), options);
            Assert.All(d.MasterParameters, p => Assert.Equal(ScalarType.Float32, p.dtype));
            Assert.Equal(low == ScalarType.Float16 ? logScale : 0.0, d.LogLossScale);
            var before = d.MasterParameters.Select(p => p.detach().clone()).ToList();
            var reports = new List<DistillationProgress>();
            d.Train(Data(), 3, new SyncProgress<DistillationProgress>(reports.Add));
            Assert.True(d.SkippedSteps == 0, $"{low}: skipped steps, losses {string.Join(", ", reports.Select(r => r.Loss))}");
            var names = student.Module.named_parameters().ToList();
            for (int i = 0; i < names.Count; i++)
            {
                Assert.Equal(low, names[i].parameter.dtype);
                Assert.True(names[i].parameter.Equals(d.MasterParameters[i].to(low)), "model weights are the masters cast down");
                Assert.False(d.MasterParameters[i].Equals(before[i]));
            }
            if (low == ScalarType.Float16) Assert.Equal(logScale + 3 * 1e-3, d.LogLossScale, 12);
        }
    }

    [Fact]
    public void Fp16LossScaleBacksOffOnOverflow()
    {
        // TRELLIS's inflat_all rule: start at 2^20; a step with non-finite fp16 gradients is skipped and halves the scale.
        var teacher = new MlpFlow(Dim, 16, 2, seed: 7, paramDType: ScalarType.Float16);
        var student = new MlpFlow(Dim, 16, 2, seed: 99, paramDType: ScalarType.Float16);
        using var d = MdtDistiller.FromTeacher(teacher, () => student, Objective(), Options() with { Precision = TrainingPrecision.Fp32MasterWeights });
        var reports = new List<DistillationProgress>();
        d.Train(Data(), 30, new SyncProgress<DistillationProgress>(reports.Add));
        int skipped = reports.TakeWhile(r => r.Skipped).Count();
        Assert.True(skipped >= 1, "2^20 must overflow fp16 gradients here");
        Assert.True(reports.Skip(skipped).Take(3).All(r => !r.Skipped), "after backing off, steps succeed");
        Assert.Equal(d.SkippedSteps, reports.Count(r => r.Skipped));
        Assert.Equal(20.0 - d.SkippedSteps + (30 - d.SkippedSteps) * 1e-3, d.LogLossScale, 9);
        Assert.All(reports.Take(skipped), r => Assert.True(double.IsFinite(r.Loss)));
    }

    [Fact]
    public void BatchSplitHandlesDenseAndRowLayouts()
    {
        using var scope = torch.NewDisposeScope();
        var dense = new DistillationBatch(Latent.Dense(torch.arange(10).reshape(5, 2)), torch.arange(5).reshape(5, 1));
        var parts = dense.Split(2);
        Assert.Equal(new long[] { 3, 2 }, parts.Select(p => p.BatchSize));
        Assert.Equal(new long[] { 6, 7, 8, 9 }, parts[1].X0.Data.reshape(-1).data<long>().ToArray());
        Assert.Equal(new long[] { 3, 4 }, parts[1].Condition!.reshape(-1).data<long>().ToArray());

        var rows = new Latent(torch.arange(6).reshape(6, 1), new RowLayout(torch.tensor(new long[] { 0, 1, 0, 2, 2, 1 }), 3));
        var rp = new DistillationBatch(rows).Split(2);
        Assert.Equal(new long[] { 0, 1, 2, 5 }, rp[0].X0.Data.reshape(-1).data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 0, 1 }, ((RowLayout)rp[0].X0.Layout).SampleIndex.data<long>().ToArray());
        Assert.Equal(new long[] { 3, 4 }, rp[1].X0.Data.reshape(-1).data<long>().ToArray());
        Assert.Equal(1, rp[1].X0.BatchSize);
        Assert.Throws<ArgumentException>(() => dense.Split(6));
    }
}

public class AdaptiveGradClipperTests
{
    private static Tensor ParamWithGrad(params float[] grad)
    {
        var p = torch.zeros(grad.Length).requires_grad_(true);
        p.grad = torch.tensor(grad);
        return p;
    }

    [Fact]
    public void BoundBecomesThePercentileOfRecentNormsOnceTheBufferIsFull()
    {
        var clip = new AdaptiveGradClipper(maxNorm: 10, percentile: 50, bufferSize: 4);
        foreach (var n in new[] { 1f, 2f, 3f })
        {
            Assert.Equal(n, clip.Clip(new[] { ParamWithGrad(n, 0) }), 5);
            Assert.Equal(10.0, clip.CurrentMaxNorm);
        }
        clip.Clip(new[] { ParamWithGrad(0, 4) });
        Assert.Equal(2.5, clip.CurrentMaxNorm!.Value, 6); // percentile([1,2,3,4], 50)
        var p = ParamWithGrad(3, 4); // norm 5 > 2.5: clipped
        Assert.Equal(5.0, clip.Clip(new[] { p }), 5);
        Assert.Equal(2.5 / (5 + 1e-6) * 5, p.grad!.norm().item<float>(), 5);
        Assert.Equal(3.5, clip.CurrentMaxNorm!.Value, 6); // buffer [5,2,3,4]
        // non-finite norms are not recorded
        clip.Clip(new[] { ParamWithGrad(float.NaN, 1) });
        Assert.Equal(1, clip.BufferPosition);
        Assert.Equal(3.5, clip.CurrentMaxNorm!.Value, 6);
        // the configured max norm caps the percentile
        var capped = new AdaptiveGradClipper(maxNorm: 3, percentile: 100, bufferSize: 2);
        capped.Clip(new[] { ParamWithGrad(5) });
        capped.Clip(new[] { ParamWithGrad(7) });
        Assert.Equal(3.0, capped.CurrentMaxNorm);
        Assert.Equal(95.0, new AdaptiveGradClipper().Percentile);
        Assert.Equal(4.8, AdaptiveGradClipper.PercentileOf(new float[] { 1, 2, 3, 4, 5 }, 95), 12);
    }
}
