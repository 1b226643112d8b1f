using MdtDist.Core.Training;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MiniTrellis;
using MiniTrellis.Evaluation;
using MiniTrellis.Model;
using MiniTrellis.Training;
using TorchSharp;
using Xunit;

namespace MdtDist.Trellis.Tests.MiniTrellis;

/// <summary>The main job end to end at a tiny budget, and the shipped teachers under a short distillation.</summary>
[Collection("MiniTrellis")]
public class MiniTrellisJobTests
{
    public MiniTrellisJobTests() => torch.set_num_threads(1);

    [Fact]
    public void TheShippedTeachersLoadAsATrellisModelFolder()
    {
        var folder = MiniTrellisModels.ShippedFolder;
        var m = MiniTrellisModels.Load(folder);
        Assert.Equal(4, m.StructureFlow.Config.Resolution);
        Assert.Equal(MiniTrellisModels.SlatChannels, m.LatentFlow.Config.InChannels);
        // The same folder is a TRELLIS model folder for the library's pipeline loader.
        var pipe = TrellisPipeline.FromFolder(folder);
        Assert.Equal(MiniTrellisModels.CondChannels, pipe.ConditionChannels);
        long bytes = Directory.EnumerateFiles(Path.Combine(folder, "ckpts")).Sum(f => new FileInfo(f).Length);
        Assert.True(bytes < 25L * 1024 * 1024, $"shipped teachers take {bytes} bytes");
    }

    [Fact]
    public void TheMainJobAtATinyBudgetWritesValidResults()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-mini-").FullName;
        int rc = MiniTrellisApp.Run(new[] { "--quick", "--out", dir, "--save-samples" });
        Assert.Equal(0, rc);
        var results = ResultsFile.Read(Path.Combine(dir, "results.json"));
        var expected = new[] { ("teacher", 25), ("teacher", 2), ("teacher", 1), ("student", 2), ("student", 1) };
        Assert.Equal(expected.Length, results.Rows.Count);
        for (int i = 0; i < expected.Length; i++)
        {
            var r = results.Rows[i];
            Assert.Equal(expected[i].Item1, r.Model);
            Assert.Equal(new[] { expected[i].Item2, expected[i].Item2 }, r.Steps);
            Assert.All(new[] { r.Cov, r.Nna, r.ClassFidelity }, v => Assert.InRange(v, 0.0, 1.0));
            Assert.True(r.Mmd >= 0 && double.IsFinite(r.Mmd));
            Assert.True(r.SecondsPerSample > 0);
        }
        // The teacher's 25-step schedule: CFG on the first 19 steps (TRELLIS's interval with rescale_t 3) → 44 evaluations per stage.
        Assert.Equal(new[] { 44, 44 }, results.Rows[0].Evaluations);
        Assert.Equal(new[] { 1, 1 }, results.Rows[4].Evaluations);
        Assert.Equal(JobBudget.Quick.Stage1Steps, results.Distillation.Stage1Steps);
        Assert.True(File.Exists(Path.Combine(dir, "samples.png")));
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(dir, "ply"), "*.ply"));
        Assert.Equal(results.Setup.GeneratedSamples, Directory.GetFiles(Path.Combine(dir, "samples", "student_1_1"), "*.ply").Length);

        // A second run resumes the distillation from its checkpoints (no step is redone) and rewrites the results.
        int rc2 = MiniTrellisApp.Run(new[] { "--quick", "--out", dir });
        Assert.Equal(0, rc2);
        Assert.True(File.Exists(Path.Combine(dir, "results.json")));
    }

    [Fact]
    public void AShortDistillationOfTheShippedTeacherImprovesTheOneStepStudent()
    {
        var m = MiniTrellisModels.Load(MiniTrellisModels.ShippedFolder);
        foreach (var p in m.StructureFlow.parameters()) p.requires_grad = false;
        using var data = FlowData.Build(m, 180, computeNormalization: false);
        var ev = new Evaluator(perClass: 3);
        // Before: the student is the teacher's copy, sampled with one unguided step.
        var before = ev.Score(new Schedule("copy [1, 1]", "student", m.StructureFlow, m.LatentFlow, StageSampler.Student(1), StageSampler.Student(1)),
            ev.Generate(m, new Schedule("copy [1, 1]", "student", m.StructureFlow, m.LatentFlow, StageSampler.Student(1), StageSampler.Student(1)), 5));
        var options = MiniTrellisApp.DistillerOptions(Directory.CreateTempSubdirectory("mdtdist-mini-distil-").FullName, 1) with { EmaRates = Array.Empty<double>() };
        using var d = MdtDistiller.FromTeacher(new TrellisFlowModel(m.StructureFlow),
            () => new TrellisFlowModel((SparseStructureFlowModel)MiniTrellisModels.Build("ss_flow", 0)),
            MdtDist.Core.Distillation.MdtDistObjective.Create(MiniTrellisApp.DistillationSettings(MiniTrellisModels.TeacherGuidance)), options);
        d.Train(new DelegateDataSource(s => data.StructureBatch(s, 8)), 40);
        var student = (SparseStructureFlowModel)d.Student.Module;
        student.eval();
        var s = new Schedule("student [1, 1]", "student", student, m.LatentFlow, StageSampler.Student(1), StageSampler.Student(1));
        var after = ev.Score(s, ev.Generate(m, s, 5));
        Assert.True(after.Mmd < before.Mmd, $"1-step MMD before {before.Mmd:G4}, after {after.Mmd:G4}");
    }
}
