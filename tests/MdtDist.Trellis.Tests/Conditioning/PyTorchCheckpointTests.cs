using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>
/// torch.save files written by PyTorch itself (TestData, copied from shared/fixtures): the DINOv2 hub state dict in the
/// zip and the legacy container, and a TRELLIS training run; checked tensor by tensor against the golden weights.
/// </summary>
public class PyTorchCheckpointTests
{
    private static string Data(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    private static GoldenCase Golden(string name) => new(Path.Combine(GoldenParityTests.BundledDirectory, name + ".json"));

    [Theory]
    [InlineData("dinov2_tiny_hub.pth", PyTorchFileFormat.Zip)]
    [InlineData("dinov2_tiny_hub_legacy.pth", PyTorchFileFormat.Legacy)]
    public void HubStateDictMatchesGoldenWeightsExactly(string file, PyTorchFileFormat format)
    {
        Assert.Equal(format, PyTorchCheckpoint.DetectFormat(Data(file)));
        using var c = Golden("dinov2_native");
        var expected = c.WithPrefix("model.");
        var sd = PyTorchCheckpoint.LoadStateDict(Data(file));
        try
        {
            Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), sd.Keys.OrderBy(k => k, StringComparer.Ordinal));
            foreach (var (name, e) in expected)
            {
                var a = sd[name];
                Assert.Equal(ScalarType.Float32, a.dtype);
                Assert.Equal(e.shape, a.shape);
                // The fixture holds the golden float64 weights cast to float32: equal after the same cast, bit for bit.
                using var e32 = e.to(ScalarType.Float32);
                Assert.True(e32.eq(a).all().item<bool>(), $"tensor '{name}' differs from the golden weights cast to float32");
            }
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }

    [Fact]
    public void HubCheckpointLoadsIntoDinov2AndReproducesGoldenTokens()
    {
        using var c = Golden("dinov2_native");
        using var noGrad = torch.no_grad();
        using var model = Dinov2Checkpoint.Load(Data("dinov2_tiny_hub.pth"), Dinov2GoldenRunner.ConfigOf(c), ScalarType.Float64);
        using var cond = model.forward(c["in.image"]);
        // Weights rounded to float32 (relative 6e-8 each) move the outputs by about as much as the whole float32 run,
        // which the manifest reports at <= 1.3e-6 relative; 1e-5 leaves a 7x margin and is still far below a wrong port (O(1)).
        double rel = GoldenAssert.RelativeError(c["out.cond"], cond);
        Assert.True(rel < 1e-5, $"relative error {rel:E2}");
    }

    [Fact]
    public void InferredConfigMatchesTheFixtureArchitecture()
    {
        var sd = PyTorchCheckpoint.LoadStateDict(Data("dinov2_tiny_hub_legacy.pth"));
        try
        {
            var cfg = Dinov2Checkpoint.InferConfig(sd, numHeads: 4);
            Assert.Equal(new Dinov2Config(64, 2, 4, 70, 14, 4, 4.0), cfg);
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }

    [Fact]
    public void TruncatedOrForeignFilesFailNamingTheFile()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-pth-");
        try
        {
            var bytes = File.ReadAllBytes(Data("dinov2_tiny_hub_legacy.pth"));
            var truncated = Path.Combine(dir.FullName, "truncated.pth");
            File.WriteAllBytes(truncated, bytes[..(bytes.Length - 1000)]);
            var e1 = Assert.Throws<InvalidDataException>(() => PyTorchCheckpoint.LoadStateDict(truncated));
            Assert.Contains(truncated, e1.Message);
            Assert.Contains("truncated", e1.Message);

            var text = Path.Combine(dir.FullName, "notes.pth");
            File.WriteAllText(text, "this is not a checkpoint");
            Assert.Equal(PyTorchFileFormat.Unknown, PyTorchCheckpoint.DetectFormat(text));
            var e2 = Assert.Throws<InvalidDataException>(() => PyTorchCheckpoint.LoadStateDict(text));
            Assert.Contains(text, e2.Message);
            Assert.Contains("torch.save(torch.load(", e2.Message);

            var zipBytes = File.ReadAllBytes(Data("dinov2_tiny_hub.pth"));
            var badZip = Path.Combine(dir.FullName, "cut.pth");
            File.WriteAllBytes(badZip, zipBytes[..(zipBytes.Length / 2)]);
            var e3 = Assert.ThrowsAny<Exception>(() => PyTorchCheckpoint.LoadStateDict(badZip));
            Assert.Contains(badZip, e3.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void TrainingRunLoadsTheEmaDenoiserAndMatchesGoldenVelocity()
    {
        var run = Data("trellis_training_run");
        Assert.True(TrainingRunCheckpoint.IsTrainingRun(run));
        var files = TrainingRunCheckpoint.List(run);
        Assert.Equal(2, files.Count);
        var pick = TrainingRunCheckpoint.Find(run);
        Assert.Equal("0.9999", pick.EmaRate);
        Assert.Equal(100, pick.Step);

        using var c = Golden("ss_flow");
        using var noGrad = torch.no_grad();
        foreach (var ema in new string?[] { null, "" })
        {
            using var model = TrainingRunCheckpoint.Load<SparseStructureFlowModel>(run, emaRate: ema, dtype: ScalarType.Float64);
            model.eval();
            using var v = model.forward(c["in.x"], c["in.t"], c["in.cond"]);
            // float32-rounded weights: the manifest's float32-vs-float64 figure for ss_flow is 2.0e-6 relative; 2e-5 gives 10x.
            double rel = GoldenAssert.RelativeError(c["out.v"], v);
            Assert.True(rel < 2e-5, $"EMA '{ema}': relative error {rel:E2}");
        }
    }

    [Fact]
    public void TrainingRunErrorsNameWhatIsThere()
    {
        var run = Data("trellis_training_run");
        var e1 = Assert.Throws<FileNotFoundException>(() => TrainingRunCheckpoint.Find(run, step: 5));
        Assert.Contains("denoiser_ema0.9999_step0000100.pt", e1.Message);
        var e2 = Assert.Throws<InvalidDataException>(() => TrainingRunCheckpoint.ReadModelConfig(run, "student"));
        Assert.Contains("denoiser", e2.Message);
        Assert.Contains("teacher", e2.Message);
        // Same strictness as a released checkpoint: a mis-shaped network reports every mismatch.
        var dir = Directory.CreateTempSubdirectory("mdtdist-run-");
        try
        {
            Directory.CreateDirectory(Path.Combine(dir.FullName, "ckpts"));
            File.Copy(Path.Combine(run, "ckpts", "denoiser_step0000100.pt"), Path.Combine(dir.FullName, "ckpts", "denoiser_step0000100.pt"));
            File.WriteAllText(Path.Combine(dir.FullName, "config.json"),
                File.ReadAllText(Path.Combine(run, "config.json")).Replace("\"model_channels\": 64", "\"model_channels\": 32"));
            var e3 = Assert.Throws<StateDictMismatchException>(() => TrainingRunCheckpoint.Load(dir.FullName));
            Assert.NotEmpty(e3.Mismatched);
            Assert.Contains("denoiser_step0000100.pt", e3.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
