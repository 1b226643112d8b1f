using MdtDist.Core.Distillation;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using MdtDist.Core.Flow;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>
/// The whole user path with TRELLIS networks: a stage-1 and a stage-2 teacher are distilled with MDT-dist by
/// <see cref="MdtDistiller"/> (a few steps, tiny networks), the students are saved in TRELLIS's checkpoint layout,
/// loaded back and plugged into the pipeline with 1-step schedules.
/// </summary>
public class TrellisDistillationTests
{
    [Fact]
    public void DistilledTrellisStudentsSaveLoadAndRunInThePipeline()
    {
        var p = TinyPipeline.Create();
        var dir = Directory.CreateTempSubdirectory("mdtdist-distill-").FullName;
        using var cond = TinyPipeline.Condition(batch: 2);
        var objective = MdtDistObjective.Create(new MdtDistSettings());
        var options = new MdtDistillerOptions { LearningRate = 1e-3, EmaRates = new[] { 0.9 }, Seed = 1, LogEvery = 1 };

        // Stage 1: dense 4³ latents.
        var ssTeacher = new SparseStructureFlowAdapter(p.StructureFlow);
        using var ss = MdtDistiller.FromTeacher(ssTeacher,
            () => new SparseStructureFlowAdapter((SparseStructureFlowModel)TinyPipeline.Build("ss_flow", 0, ScalarType.Float32)), objective, options);
        var before = ss.Student.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var gen = new Generator(5);
        var data = new DelegateDataSource(_ => new DistillationBatch(Latent.Dense(torch.randn(new long[] { 2, 8, 4, 4, 4 }, generator: gen)), cond));
        var last = ss.Train(data, 3);
        Assert.NotNull(last);
        Assert.Equal(3, ss.Step);
        Assert.True(double.IsFinite(last!.Loss));
        Assert.Contains(ss.Student.Module.state_dict(), kv => !kv.Value.eq(before[kv.Key]).all().item<bool>());
        var ssStem = Path.Combine(dir, "ckpts", "ss_flow_student");
        TrellisCheckpoint.Save(ss.Student.Module, ssStem);

        // Stage 2: sparse latents on fixed coordinates (two samples of different sizes).
        var coords = torch.tensor(new[] { 0, 1, 1, 1, 0, 1, 2, 1, 0, 4, 4, 4, 1, 8, 8, 8, 1, 8, 9, 8 }, new long[] { 5, 4 }, dtype: ScalarType.Int32);
        var slatCoords = new SparseCoordinates(coords, 16, 2);
        using var slat = MdtDistiller.FromTeacher(new SLatFlowAdapter(p.LatentFlow),
            () => new SLatFlowAdapter((SLatFlowModel)TinyPipeline.Build("slat_flow", 0, ScalarType.Float32)), objective, options);
        var slatData = new DelegateDataSource(_ => new DistillationBatch(new SparseTensor(torch.randn(new long[] { 5, 8 }, generator: gen), slatCoords).ToLatent(), cond));
        var last2 = slat.Train(slatData, 2);
        Assert.True(double.IsFinite(last2!.Loss));
        var slatStem = Path.Combine(dir, "ckpts", "slat_flow_student");
        TrellisCheckpoint.Save(slat.Student.Module, slatStem, ScalarType.Float16);

        var fast = p.WithStructureFlow(TrellisCheckpoint.Load<SparseStructureFlowModel>(ssStem), StageSampler.Student(1))
                    .WithLatentFlow(TrellisCheckpoint.Load<SLatFlowModel>(slatStem), StageSampler.Student(1));
        using var r = fast.Run(TinyPipeline.Condition(), new TrellisRunOptions { Seed = 9 });
        Assert.Equal(1, r.StructureEvaluations);
        Assert.True(r.LatentEvaluations <= 1);
        Assert.All(r.Samples.Where(s => !s.IsEmpty), s => Assert.True(torch.isfinite(s.Gaussians!.GetXyz()).all().item<bool>()));
    }
}
