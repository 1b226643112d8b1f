using MdtDist.TestSupport;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

/// <summary>Damaged training checkpoint folders: a resume falls back to the newest valid checkpoint, and pruning cleans up after kills.</summary>
public sealed class CheckpointStoreHostileTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "mdtdist-cksh-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static MdtDistiller Create() => MdtDistiller.FromTeacher(new MlpFlow(2, 16, 2, seed: 7), () => new MlpFlow(2, 16, 2, seed: 99),
        MdtDistObjective.Create(new MdtDistSettings { DNorm = false, GuidanceVm = 0, GuidanceVd = 0 }),
        new MdtDistillerOptions { LearningRate = 1e-3, Seed = 42, EmaRates = new[] { 0.9 }, LogEvery = 0, KeepCheckpoints = 5 });

    private static IDistillationDataSource Data() => new DelegateDataSource(step =>
    {
        using var g = new Generator((ulong)(1000 + step));
        return new DistillationBatch(Latent.Dense(torch.randn(new long[] { 8, 2 }, generator: g)));
    });

    /// <summary>Writes checkpoints of steps 2 and 3 and returns the parameters saved at step 2 and the step-3 folder.</summary>
    private (Dictionary<string, Tensor> AtStep2, string Newest) TwoCheckpoints()
    {
        using var d = Create();
        d.Train(Data(), 2);
        d.SaveCheckpoint(_dir);
        var at2 = ParamUtil.Snapshot(d.Student.Module);
        d.Train(Data(), 3);
        return (at2, d.SaveCheckpoint(_dir));
    }

    private void AssertResumesStep2(Dictionary<string, Tensor> at2, string expectedWarning)
    {
        var logger = new ListLogger();
        using var e = MdtDistiller.FromTeacher(new MlpFlow(2, 16, 2, seed: 7), () => new MlpFlow(2, 16, 2, seed: 99),
            MdtDistObjective.Create(new MdtDistSettings { DNorm = false, GuidanceVm = 0, GuidanceVd = 0 }),
            new MdtDistillerOptions { LearningRate = 1e-3, Seed = 42, EmaRates = new[] { 0.9 }, LogEvery = 0 }, logger);
        Assert.True(e.TryResume(_dir));
        Assert.Equal(2, e.Step);
        Assert.True(ParamUtil.BitEqual(at2, ParamUtil.Snapshot(e.Student.Module)));
        Assert.Contains(logger.Entries, e => e.Level == Microsoft.Extensions.Logging.LogLevel.Warning && e.Message.Contains("step-000000003", StringComparison.Ordinal) && e.Message.Contains(expectedWarning, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("student.safetensors")]
    [InlineData("optimizer.bin")]
    [InlineData("trainer.json")]
    public void SameSizeByteFlipInTheNewestFallsBackToThePreviousWithAWarning(string file)
    {
        var (at2, newest) = TwoCheckpoints();
        var p = Path.Combine(newest, file);
        var bytes = File.ReadAllBytes(p);
        bytes[bytes.Length / 2] ^= 0x10;
        File.WriteAllBytes(p, bytes);
        AssertResumesStep2(at2, $"file '{file}' does not match its SHA-256");
    }

    [Theory]
    [InlineData("Files", "null", "no \"Files\" list")]
    [InlineData("Files", "[null]", "entry 0 is null")]
    [InlineData("Name", "null", "has no \"Name\"")]
    [InlineData("Name", "\"../step-000000002/trainer.json\"", "not a file of this folder")]
    [InlineData("Step", "7", "manifest is for step 7")]
    [InlineData("Bytes", "\"many\"", "unreadable manifest")]
    public void MalformedManifestInTheNewestFallsBackToThePrevious(string key, string value, string expectedWarning)
    {
        var (at2, newest) = TwoCheckpoints();
        var mp = Path.Combine(newest, "manifest.json");
        var m = JsonNode.Parse(File.ReadAllText(mp))!.AsObject();
        var v = JsonNode.Parse(value);
        if (key is "Files" or "Step") m[key] = v;
        else m["Files"]![0]![key] = v;
        File.WriteAllText(mp, m.ToJsonString());
        AssertResumesStep2(at2, expectedWarning);
    }

    [Fact]
    public void AStepNumberBeyond64BitsIsIgnored()
    {
        var (at2, newest) = TwoCheckpoints();
        var huge = Path.Combine(_dir, "step-99999999999999999999");
        Directory.CreateDirectory(huge);
        foreach (var f in Directory.GetFiles(newest)) File.Copy(f, Path.Combine(huge, Path.GetFileName(f)));
        Assert.Equal(newest, CheckpointStore.FindLatest(_dir));
        Assert.Equal(2, CheckpointStore.List(_dir).Count);
        CheckpointStore.Prune(_dir, 5);
        Assert.True(Directory.Exists(huge)); // not ours to delete
        // and with the newest damaged, the fallback still works beside it
        File.Delete(Path.Combine(newest, "state.safetensors"));
        AssertResumesStep2(at2, "file 'state.safetensors' is missing");
    }

    [Fact]
    public void PruningRemovesWhatAKillDuringAnEarlierPruneLeft()
    {
        using var d = Create();
        var saved = new List<string>();
        for (int s = 1; s <= 3; s++)
        {
            d.Train(Data(), s);
            saved.Add(d.SaveCheckpoint(_dir));
        }
        // A kill in the middle of the old Directory.Delete: the oldest folder lost some files (its manifest survived);
        // one in the middle of the new rename-then-delete leaves a hidden .del- folder.
        File.Delete(Path.Combine(saved[0], "student.safetensors"));
        var hidden = Path.Combine(_dir, ".del-step-000000000-0123");
        Directory.CreateDirectory(hidden);
        File.WriteAllText(Path.Combine(hidden, "trainer.json"), "{}");
        Assert.Equal(2, CheckpointStore.List(_dir).Count);

        // resuming finishes the interrupted deletion even when no further checkpoint (and prune) follows
        Assert.Equal(saved[2], CheckpointStore.FindLatest(_dir, null));
        Assert.False(Directory.Exists(hidden));
        Directory.CreateDirectory(hidden);

        CheckpointStore.Prune(_dir, 5);
        Assert.False(Directory.Exists(saved[0]));
        Assert.False(Directory.Exists(hidden));
        Assert.Equal(saved.Skip(1), CheckpointStore.List(_dir));

        // the newest complete checkpoints are kept; pruning to 1 leaves no step folder but the newest
        CheckpointStore.Prune(_dir, 1);
        Assert.Equal(new[] { saved[2] }, Directory.GetDirectories(_dir));
    }

    [Theory]
    [InlineData("Step", "\"three\"", "could not be converted")]
    [InlineData("ParameterNames", "null", "\"ParameterNames\" is null")]
    [InlineData("EmaRates", "null", "\"EmaRates\" is null")]
    [InlineData("ClipBufferPosition", "-1", "\"ClipBufferPosition\" -1")]
    [InlineData("Step", "-5", "\"Step\" -5")]
    public void MalformedTrainerStateWithAValidHashIsAClearError(string key, string value, string expected)
    {
        // A checkpoint whose manifest matches but whose trainer.json has a value of the wrong type (written by
        // something else): no fallback (the files are what the manifest says), an error naming the file.
        var (_, newest) = TwoCheckpoints();
        foreach (var f in Directory.GetDirectories(_dir).Where(p => p != newest)) Directory.Delete(f, true);
        var tp = Path.Combine(newest, "trainer.json");
        var t = JsonNode.Parse(File.ReadAllText(tp))!.AsObject();
        t[key] = JsonNode.Parse(value);
        File.WriteAllText(tp, t.ToJsonString());
        var mp = Path.Combine(newest, "manifest.json");
        var m = JsonNode.Parse(File.ReadAllText(mp))!.AsObject();
        foreach (var e in m["Files"]!.AsArray())
            if (e!["Name"]!.GetValue<string>() == "trainer.json")
            {
                e["Bytes"] = new FileInfo(tp).Length;
                e["Sha256"] = CheckpointStore.Hash(tp);
            }
        File.WriteAllText(mp, m.ToJsonString());
        using var d = Create();
        var ex = Assert.Throws<InvalidDataException>(() => d.TryResume(_dir));
        Assert.Contains(tp, ex.Message);
        Assert.Contains(expected, ex.Message);
    }
}
