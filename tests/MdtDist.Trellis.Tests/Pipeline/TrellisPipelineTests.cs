using MdtDist.Trellis.Flow;
using MdtDist.TestSupport;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

public class TrellisPipelineTests
{
    private static readonly StageSampler OneStep = StageSampler.Student(1);

    [Fact]
    public void RunsBothStagesWithTwentyFiveAndWithOneStep()
    {
        var p = TinyPipeline.Create();
        using var cond = TinyPipeline.Condition();
        var reports = new List<TrellisProgress>();
        using var teacher = p.Run(cond, new TrellisRunOptions { Seed = 1, Progress = new SyncProgress<TrellisProgress>(reports.Add) });
        // TRELLIS-image-large defaults: 25 Euler steps, CFG on t in [0.5, 1] -> 44 evaluations per stage.
        Assert.Equal(44, teacher.StructureEvaluations);
        Assert.Equal(44, teacher.LatentEvaluations);
        Assert.Equal(25, reports.Count(r => r.Stage == TrellisStage.SparseStructure));
        Assert.Equal(25, reports.Count(r => r.Stage == TrellisStage.StructuredLatent));
        Assert.Contains(reports, r => r.Stage == TrellisStage.Decoding);
        Assert.Equal(new long[] { 1, 8, 4, 4, 4 }, teacher.StructureLatent.shape);
        var s = Assert.Single(teacher.Samples);
        Assert.False(s.IsEmpty);
        long n = s.Coords.shape[0];
        Assert.Equal(new long[] { n, 3 }, s.Coords.shape);
        Assert.Equal(ScalarType.Int32, s.Coords.dtype);
        Assert.True(s.Coords.min().item<int>() >= 0 && s.Coords.max().item<int>() < 16);
        Assert.Equal(new long[] { n, 8 }, s.Latent!.shape);
        Assert.Equal(4 * n, s.Gaussians!.Count);
        Assert.True(torch.isfinite(s.Gaussians.GetXyz()).all().item<bool>());

        using var student = p.Run(cond, new TrellisRunOptions { Seed = 1, StructureSampler = OneStep, LatentSampler = OneStep });
        Assert.Equal(1, student.StructureEvaluations);
        Assert.Equal(1, student.LatentEvaluations);
        Assert.False(student.Samples[0].IsEmpty);
        Assert.Equal(4 * student.Samples[0].Coords.shape[0], student.Samples[0].Gaussians!.Count);
    }

    [Fact]
    public void IsDeterministicUnderASeedAndBatchesSeveralSamples()
    {
        var p = TinyPipeline.Create();
        using var cond = TinyPipeline.Condition();
        var opts = new TrellisRunOptions { Seed = 5, NumSamples = 3, StructureSampler = StageSampler.Student(2, 2.0), LatentSampler = StageSampler.Student(2, 1.0) };
        using var a = p.Run(cond, opts);
        using var b = p.Run(cond, opts);
        using var c = p.Run(cond, new TrellisRunOptions { Seed = 6, NumSamples = 3, StructureSampler = opts.StructureSampler, LatentSampler = opts.LatentSampler });
        Assert.Equal(3, a.Samples.Count);
        Assert.True(Same(a.StructureLatent, b.StructureLatent));
        Assert.False(Same(a.StructureLatent, c.StructureLatent));
        for (int i = 0; i < 3; i++)
        {
            Assert.True(Same(a.Samples[i].Coords, b.Samples[i].Coords));
            Assert.True(Same(a.Samples[i].Latent!, b.Samples[i].Latent!));
            Assert.True(Same(a.Samples[i].Gaussians!.GetXyz(), b.Samples[i].Gaussians!.GetXyz()));
        }
        // The three samples differ from each other (different noise), and rows of a.Coords are batch-contiguous.
        Assert.False(Same(a.StructureLatent[0], a.StructureLatent[1]));
        var batch = a.Coords[.., 0].data<int>().ToArray();
        Assert.True(batch.Zip(batch.Skip(1)).All(z => z.First <= z.Second));
        Assert.Equal(a.Samples.Sum(s => s.Coords.shape[0]), a.Coords.shape[0]);
    }

    [Fact]
    public void WritesGaussiansThatReadBackAsThePly()
    {
        var p = TinyPipeline.Create();
        using var cond = TinyPipeline.Condition();
        using var r = p.Run(cond, new TrellisRunOptions { Seed = 3, StructureSampler = OneStep, LatentSampler = OneStep });
        var g = r.Samples[0].Gaussians!;
        var path = Path.Combine(Directory.CreateTempSubdirectory("mdtdist-ply-").FullName, "sample.ply");
        GaussianPly.Save(path, g);
        var back = GaussianPly.Read(path);
        using var table = back.ToTensor();
        Assert.Equal(new long[] { g.Count, 17 }, table.shape);
        // x stays x; y and z are TRELLIS's z-up -> y-up transform (x, y, z) -> (x, -z, y).
        using var xyz = g.GetXyz().to(ScalarType.Float32);
        Assert.True((table[.., 0] - xyz[.., 0]).abs().max().item<float>() < 1e-6);
        Assert.True((table[.., 1] + xyz[.., 2]).abs().max().item<float>() < 1e-6);
        Assert.True((table[.., 2] - xyz[.., 1]).abs().max().item<float>() < 1e-6);
        Assert.Equal(GaussianPly.ToBytes(g, GaussianPly.DefaultTransform), File.ReadAllBytes(path));
    }

    [Fact]
    public void EmptyStructuresGiveAClearResultNotACrash()
    {
        var p = TinyPipeline.Create();
        using var cond = TinyPipeline.Condition();
        var opts = new TrellisRunOptions { Seed = 11, NumSamples = 2, StructureSampler = OneStep, LatentSampler = OneStep };
        using var first = p.Run(cond, opts);
        // Shift the decoder's output bias so that sample 0 keeps some voxels and sample 1 has none (or the reverse).
        using var logits = p.StructureDecoder.forward(first.StructureLatent);
        var max0 = logits[0].max().item<float>();
        var max1 = logits[1].max().item<float>();
        Assert.NotEqual(max0, max1);
        var bias = p.StructureDecoder.named_parameters().Last(kv => kv.name.StartsWith("out_layer") && kv.name.EndsWith("bias")).parameter;
        using (torch.no_grad()) bias.sub_((max0 + max1) / 2);
        using var mixed = p.Run(cond, opts);
        int full = max0 > max1 ? 0 : 1, empty = 1 - full;
        Assert.True(mixed.Samples[empty].IsEmpty);
        Assert.Null(mixed.Samples[empty].Latent);
        Assert.Null(mixed.Samples[empty].Gaussians);
        Assert.False(mixed.Samples[full].IsEmpty);
        Assert.Equal(4 * mixed.Samples[full].Coords.shape[0], mixed.Samples[full].Gaussians!.Count);
        using (torch.no_grad()) bias.sub_(1e4);
        using var none = p.Run(cond, opts);
        Assert.All(none.Samples, s => Assert.True(s.IsEmpty));
        Assert.Equal(0, none.LatentEvaluations);
    }

    [Fact]
    public void LoadsATrellisModelFolderAndMatchesTheInMemoryPipeline()
    {
        // Samplers of their own (12 steps, CFG 7.5 / 3.0): pipeline.json carries them.
        var p = RandomTinyTrellis.Create(structureSampler: new StageSampler { Steps = 12, CfgStrength = 7.5 }, latentSampler: new StageSampler { Steps = 12, CfgStrength = 3.0 });
        var dir = TinyPipeline.WriteFolder(p);
        var loaded = TrellisPipeline.FromFolder(dir);
        Assert.Equal(p.StructureSampler, loaded.StructureSampler);
        Assert.Equal(p.LatentSampler, loaded.LatentSampler);
        Assert.Equal(p.Normalization.Mean, loaded.Normalization.Mean);
        Assert.Equal(p.Normalization.Std, loaded.Normalization.Std);
        Assert.Equal(12, loaded.StructureSampler.Steps);
        Assert.Equal(7.5, loaded.StructureSampler.CfgStrength);
        Assert.Equal(3.0, loaded.LatentSampler.CfgStrength);
        Assert.Equal((0.5, 1.0), (loaded.LatentSampler.CfgIntervalStart, loaded.LatentSampler.CfgIntervalEnd));
        using var cond = TinyPipeline.Condition();
        var opts = new TrellisRunOptions { Seed = 2, StructureSampler = StageSampler.Student(2), LatentSampler = StageSampler.Student(2) };
        using var a = p.Run(cond, opts);
        using var b = loaded.Run(cond, opts);
        Assert.True(Same(a.Coords, b.Coords));
        Assert.True(Same(a.Samples[0].Gaussians!.GetXyz(), b.Samples[0].Gaussians!.GetXyz()));
        // A missing checkpoint names the path tried.
        File.Delete(Path.Combine(dir, "ckpts", "slat_flow.json"));
        var e = Assert.Throws<FileNotFoundException>(() => TrellisPipeline.FromFolder(dir));
        Assert.Contains("slat_flow", e.Message);
        Assert.Throws<FileNotFoundException>(() => TrellisPipeline.FromFolder(Path.Combine(dir, "nope")));
    }

    [Fact]
    public void AStudentReplacesEitherFlow()
    {
        var p = TinyPipeline.Create();
        var studentSs = (SparseStructureFlowModel)TinyPipeline.Build("ss_flow", 999, ScalarType.Float32);
        var studentSlat = (SLatFlowModel)TinyPipeline.Build("slat_flow", 998, ScalarType.Float32);
        var fast = p.WithStructureFlow(studentSs, StageSampler.Student(1)).WithLatentFlow(studentSlat, StageSampler.Student(2));
        Assert.Same(studentSs, fast.StructureFlow);
        Assert.Same(studentSlat, fast.LatentFlow);
        using var cond = TinyPipeline.Condition();
        using var r = fast.Run(cond, new TrellisRunOptions { Seed = 4 });
        Assert.Equal(1, r.StructureEvaluations);
        Assert.Equal(2, r.LatentEvaluations);
    }

    [Fact]
    public void RejectsBadConditionsAndHonoursCancellation()
    {
        var p = TinyPipeline.Create();
        using var wide = torch.randn(new long[] { 1, 6, 17 }, generator: new Generator(5));   // only its width matters
        Assert.Contains("16", Assert.Throws<ArgumentException>(() => p.Run(wide)).Message);
        using var cond = TinyPipeline.Condition(batch: 2);
        Assert.Throws<ArgumentException>(() => p.Run(cond, new TrellisRunOptions { NumSamples = 3 }));
        Assert.Throws<ArgumentException>(() => p.Run(cond, new TrellisRunOptions { NumSamples = 0 }));
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress<TrellisProgress>(r => { if (r.Step == 2) cts.Cancel(); });
        Assert.Throws<OperationCanceledException>(() => p.Run(cond, new TrellisRunOptions { NumSamples = 2, Progress = progress, CancellationToken = cts.Token }));
        var ss = (SparseStructureFlowModel)TinyPipeline.Build("ss_flow", 1, ScalarType.Float32);
        var otherDecoder = new SparseStructureDecoder(new SparseStructureDecoderConfig { OutChannels = 1, LatentChannels = 4, NumResBlocks = 1, NumResBlocksMiddle = 1, Channels = new long[] { 8, 8 } });
        Assert.Throws<ArgumentException>(() => new TrellisPipeline(ss, otherDecoder, p.LatentFlow));
    }

    [Fact]
    public void StagesCalledOneByOneWithGivenNoiseReproduceRun()
    {
        var p = TinyPipeline.Create(ScalarType.Float64);
        using var cond = TinyPipeline.Condition(dtype: ScalarType.Float64);
        var ss = StageSampler.Student(2, 1.5);
        var slatSampler = StageSampler.Student(2, 0.5);
        using var run = p.Run(cond, new TrellisRunOptions { Seed = 21, StructureSampler = ss, LatentSampler = slatSampler });

        // Run draws both noises from one generator seeded with Seed (stage 1 first), in float32 on the CPU.
        var gen = new Generator(21);
        using var ssNoise = torch.randn(p.StructureNoiseShape(1), dtype: ScalarType.Float32, generator: gen);
        var condition = TrellisCondition.FromImageFeatures(cond);
        var z = p.SampleSparseStructure(condition, 1, new TrellisStageOptions { Sampler = ss, Noise = ssNoise });
        Assert.Equal(4, z.Evaluations);
        Assert.True(Same(run.StructureLatent, z.Result));
        using var coords = p.DecodeOccupancy(z.Result);
        Assert.True(Same(run.Coords, coords));
        using var slatNoise = torch.randn(new[] { coords.shape[0], 8L }, dtype: ScalarType.Float32, generator: gen);
        var slat = p.SampleStructuredLatent(condition, coords, new TrellisStageOptions { Sampler = slatSampler, Noise = slatNoise });
        Assert.True(Same(run.Samples[0].Latent!, slat.Result.Feats));
        using var decoded = p.Decode(slat.Result);
        Assert.True(Same(run.Samples[0].Gaussians!.GetXyz(), decoded.Gaussians![0].GetXyz()));

        // The latent is un-normalised with + mean: undoing it by hand gives back the flow's own output, whose
        // channel means are far from slat_normalization's (e.g. -2.17 and +1.20).
        var norm = p.Normalization;
        using var mean = torch.tensor(norm.Mean.ToArray(), dtype: ScalarType.Float64);
        using var std = torch.tensor(norm.Std.ToArray(), dtype: ScalarType.Float64);
        using var raw = (slat.Result.Feats - mean) / std;
        var x = new MdtDist.Trellis.Sparse.SparseTensor(slatNoise.to(ScalarType.Float64), coords);
        using var direct = new MdtDist.Core.Sampling.EulerSolver().Sample(slatSampler.Guide(new SLatFlowAdapter(p.LatentFlow)), x.ToLatent(), cond, slatSampler.Grid());
        Assert.True((raw - direct.Samples).abs().max().item<double>() < 1e-12);
        direct.Samples.Dispose();
        z.Result.Dispose();
        slat.Result.Feats.Dispose();
    }

    [Fact]
    public void TheNegativeConditionIsUsedByGuidance()
    {
        var p = TinyPipeline.Create(ScalarType.Float64);
        using var cond = TinyPipeline.Condition(dtype: ScalarType.Float64);
        var guided = new TrellisStageOptions { Sampler = StageSampler.Student(1, 2.0), Seed = 3 };
        using var zeros = torch.zeros(1, 6, 16, dtype: ScalarType.Float64);
        using var other = torch.randn(new long[] { 1, 6, 16 }, dtype: ScalarType.Float64, generator: new Generator(77));
        using var a = p.SampleSparseStructure(TrellisCondition.FromImageFeatures(cond), 1, guided).Result;
        using var b = p.SampleSparseStructure(new TrellisCondition(cond, zeros), 1, guided).Result;
        using var c = p.SampleSparseStructure(new TrellisCondition(cond, other), 1, guided).Result;
        Assert.True(Same(a, b));
        // v = (1+w) v_c - w v_u: with one Euler step from t = 1, z differs by w * (v_u(other) - v_u(zeros)), not zero.
        Assert.True((a - c).abs().max().item<double>() > 1e-3);
    }

    [Fact]
    public void StagesRejectGivenNoiseOfTheWrongShapeAndUnsupportedFormats()
    {
        var p = TinyPipeline.Create();
        using var cond = TinyPipeline.Condition();
        var condition = TrellisCondition.FromImageFeatures(cond);
        using var bad = torch.zeros(new long[] { 1, 8, 4, 4, 5 });
        var e = Assert.Throws<ArgumentException>(() => p.SampleSparseStructure(condition, 1, new TrellisStageOptions { Noise = bad }));
        Assert.Contains("[1, 8, 4, 4, 4]", e.Message);
        using var coords = torch.tensor(new int[] { 0, 1, 2, 3, 0, 2, 2, 3 }, new long[] { 2, 4 });
        using var badSlat = torch.zeros(3, 8);
        Assert.Contains("[2, 8]", Assert.Throws<ArgumentException>(() => p.SampleStructuredLatent(condition, coords, new TrellisStageOptions { Noise = badSlat })).Message);
        using var none = torch.zeros(new long[] { 0, 4 }, dtype: ScalarType.Int32);
        Assert.Throws<ArgumentException>(() => p.SampleStructuredLatent(condition, none));
        var slat = p.SampleStructuredLatent(condition, coords, new TrellisStageOptions { Sampler = OneStep }).Result;
        Assert.Throws<InvalidOperationException>(() => p.Decode(slat, TrellisFormats.Mesh));   // no mesh decoder
        using var nothing = p.Decode(slat, TrellisFormats.None);
        Assert.Null(nothing.Gaussians);
        var noDecoder = new TrellisPipeline(p.StructureFlow, p.StructureDecoder, p.LatentFlow);
        Assert.Equal(TrellisFormats.None, noDecoder.AvailableFormats);
        Assert.Throws<InvalidOperationException>(() => noDecoder.DecodeGaussians(slat));
    }

    [Fact]
    public void ConditionRecordValidatesItsTensors()
    {
        using var cond = torch.zeros(2, 5, 16);
        var c = TrellisCondition.FromImageFeatures(cond);
        Assert.Equal(new long[] { 1, 5, 16 }, c.NegCond.shape);
        Assert.Equal(0.0, c.NegCond.abs().max().item<float>());
        using var wrongWidth = torch.zeros(1, 5, 15);
        Assert.Contains("NegCond", Assert.Throws<ArgumentException>(() => new TrellisCondition(cond, wrongWidth)).Message);
        using var batched = torch.zeros(2, 5, 16);
        Assert.Throws<ArgumentException>(() => new TrellisCondition(cond, batched));
        using var nan = torch.full(new long[] { 1, 5, 16 }, double.NaN);
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => TrellisCondition.FromImageFeatures(nan)).Message);
        using var flat = torch.zeros(5, 16);
        Assert.Throws<ArgumentException>(() => TrellisCondition.FromImageFeatures(flat));
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

}
