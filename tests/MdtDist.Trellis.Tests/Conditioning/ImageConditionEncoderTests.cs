using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>Pictures → condition tokens through the public encoder; pipeline.json's image_cond_model and the weight lookup.</summary>
public class ImageConditionEncoderTests
{
    private static string Data(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    [Fact]
    public void EncodesFilesLikeTheModelOnTrellisPreprocessedImages()
    {
        using var c = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "dinov2_native.json"));
        var model = Dinov2Checkpoint.Load(Data("dinov2_tiny_hub.pth"), Dinov2GoldenRunner.ConfigOf(c));
        using var encoder = new ImageConditionEncoder(model);
        var cond = encoder.Encode(new[] { Data("image_preprocess/wide_input.png"), Data("image_preprocess/tall_input.png") });
        using var scope = torch.NewDisposeScope();
        Assert.Equal(new long[] { 2, 1 + 4 + 37 * 37, 64 }, cond.Cond.shape);
        Assert.Equal(0.0, cond.NegCond.abs().max().item<float>());
        // Same as the model applied to TRELLIS's own preprocessed PNG (the preprocessing is byte-exact).
        using var expected = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(Data("image_preprocess/tall_expected.png"));
        using var noGrad = torch.no_grad();
        var direct = model.forward(ImagePreprocessor.ToTensor(new[] { expected }));
        Assert.Equal(0.0, GoldenAssert.RelativeError(direct, cond.Cond.narrow(0, 1, 1)));
        cond.Cond.Dispose();
        cond.NegCond.Dispose();
    }

    [Fact]
    public void ModelFolderNamesTheConditionModelAndLoadingIsStrict()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-cond-");
        try
        {
            var pj = Path.Combine(dir.FullName, "pipeline.json");
            File.WriteAllText(pj, """{"name": "TrellisImageTo3DPipeline", "args": {"image_cond_model": "dinov2_vitl14_reg"}}""");
            // The tiny fixture is not ViT-L: every mis-shaped tensor is reported before anything is copied.
            var e = Assert.Throws<StateDictMismatchException>(() => ImageConditionEncoder.FromModelFolder(dir.FullName, Data("dinov2_tiny_hub.pth")));
            Assert.Contains("cls_token", e.Message);
            Assert.Contains("blocks.2.norm1.weight", e.Missing);

            File.WriteAllText(pj, """{"args": {"image_cond_model": "dinov2_vitg14_reg"}}""");
            Assert.Throws<NotSupportedException>(() => ImageConditionEncoder.FromModelFolder(dir.FullName, Data("dinov2_tiny_hub.pth")));

            File.WriteAllText(pj, """{"args": {"models": {}}}""");
            Assert.Contains("image_cond_model", Assert.Throws<InvalidDataException>(() => ImageConditionEncoder.FromModelFolder(dir.FullName)).Message);

            var paths = Dinov2Checkpoint.SearchPaths(dir.FullName);
            Assert.Equal(Path.Combine(dir.FullName, Dinov2Config.VitL14RegCheckpointFile), paths[^1]);
            Assert.Contains(paths, p => p.EndsWith(Path.Combine("hub", "checkpoints", Dinov2Config.VitL14RegCheckpointFile), StringComparison.Ordinal));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
