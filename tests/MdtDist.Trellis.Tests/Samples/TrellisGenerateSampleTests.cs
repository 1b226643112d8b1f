using MdtDist.Trellis.Representations;
using TrellisGenerate;
using Xunit;
using MdtDist.Trellis.Tests.Pipeline;

namespace MdtDist.Trellis.Tests.Samples;

public class TrellisGenerateSampleTests
{
    [Fact]
    public void TheSampleRunsTheWholePipelineAndWritesReadablePlyFiles()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        var log = new StringWriter();
        var image = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "wide_input.png");
        int rc = TrellisGenerateApp.Run(new[] { "--random-tiny", "--image", image, "--samples", "2", "--ss-steps", "2", "--slat-steps", "1", "--out", Path.Combine(dir, "t") }, log);
        Assert.True(rc == 0, log.ToString());
        Assert.Contains("stage 1: 2 steps", log.ToString());
        foreach (var i in new[] { 0, 1 })
        {
            var ply = GaussianPly.Read(Path.Combine(dir, $"t_{i}.ply"));
            using var table = ply.ToTensor();
            Assert.Equal(17, table.shape[1]);
            Assert.True(table.shape[0] > 0);
        }
    }

    [Fact]
    public void WithoutArgumentsItExplainsWhatToDownloadAndABadFolderIsAClearError()
    {
        var log = new StringWriter();
        Assert.Equal(1, TrellisGenerateApp.Run(Array.Empty<string>(), log));
        Assert.Contains("huggingface-cli download JeffreyXiang/TRELLIS-image-large", log.ToString());
        var log2 = new StringWriter();
        Assert.Equal(3, TrellisGenerateApp.Run(new[] { "/nonexistent/TRELLIS", "--image", "x.png" }, log2));
        Assert.Contains("pipeline.json", log2.ToString());
        // --help lists the options; a malformed value is a clear error, not a crash
        var help = new StringWriter();
        Assert.Equal(0, TrellisGenerateApp.Run(new[] { "--help" }, help));
        Assert.Contains("--slat-steps", help.ToString());
        var bad = new StringWriter();
        Assert.NotEqual(0, TrellisGenerateApp.Run(new[] { "--random-tiny", "--samples", "two" }, bad));
        Assert.Contains("two", bad.ToString());
    }

    [Fact]
    public void BadCommandLinesGetTheParsersMessageAndExitCodeOne()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        try
        {
            var image = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "wide_input.png");
            foreach (var (args, expected) in new[]
                     {
                         (new[] { "--random-tiny", "--samples", "two" }, "--samples needs an integer >= 1, got 'two'"),
                         (new[] { "--random-tiny", "--ss-steps", "0" }, "--ss-steps needs an integer >= 1, got '0'"),
                         (new[] { "--random-tiny", "--simplify", "1.5" }, "--simplify needs a fraction in [0, 1), got '1.5'"),
                         (new[] { "--random-tiny", "--preview-size", "-3" }, "--preview-size needs an integer >= 0, got '-3'"),
                         (new[] { "--random-tiny", "--multi-image", "average" }, "average"),
                         (new[] { "--random-tiny", "--bogus", "1" }, "--bogus"),
                         (new[] { "--random-tiny", "--image", image, "--text", "a chair" }, "--image and --text exclude each other"),
                         (new[] { "some/folder", "--text", "a chair", "--matting", "u2net.onnx" }, "--matting applies to --image only"),
                     })
            {
                var log = new StringWriter();
                var prefix = Path.Combine(dir, "never");
                Assert.Equal(1, TrellisGenerateApp.Run(args.Concat(new[] { "--out", prefix }).ToArray(), log));
                Assert.Contains(expected, log.ToString());
                Assert.DoesNotContain("   at ", log.ToString());
                Assert.Empty(Directory.GetFiles(dir));
            }
            // --text on the random tiny networks: no text model there, a clear error naming the option.
            var noText = new StringWriter();
            Assert.Equal(3, TrellisGenerateApp.Run(new[] { "--random-tiny", "--text", "a chair", "--out", Path.Combine(dir, "t") }, noText));
            Assert.Contains("--text needs a TRELLIS-text model folder", noText.ToString());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void TextPromptsRunATrellisTextFolderWithOneRowPerSample()
    {
        // The TRELLIS-text layout of TrellisTextPipelineTests: tiny random flows in the text folder, the decoders in the
        // sibling TRELLIS-image-large folder, a tiny CLIP with the real vocabulary in clip-vit-large-patch14.
        var text = TrellisTextPipelineTests.WriteTextLayout(out var clip);
        clip.Dispose();
        try
        {
            var prefix = Path.Combine(Path.GetDirectoryName(text)!, "out", "t");
            var log = new StringWriter();
            int rc = TrellisGenerateApp.Run(new[] { text, "--text", "a red chair", "--text", "a blue table", "--samples", "2",
                "--ss-steps", "2", "--slat-steps", "1", "--preview-size", "0", "--out", prefix }, log);
            var output = log.ToString();
            Assert.True(rc == 0, output);
            // Two prompts, two samples each: tokens [2, 77, 16] (the tiny CLIP's width), a batch of 4 samples.
            Assert.Contains("2 prompt(s) -> tokens [2, 77, 16]", output);
            Assert.Contains("negative: the empty prompt", output);
            // pipeline.json's TRELLIS-text guidance (7.5 on [0.5, 0.95]) is kept; only the steps are overridden.
            Assert.Contains("stage 1: 2 steps, cfg 7.5", output);
            var written = Enumerable.Range(0, 4).Where(i => File.Exists($"{prefix}_{i}.ply")).ToList();
            Assert.NotEmpty(written);
            foreach (var i in written)
            {
                var ply = GaussianPly.Read($"{prefix}_{i}.ply");
                using var table = ply.ToTensor();
                Assert.True(table.shape[0] > 0);
            }
            // The summary table names each sample's prompt: samples 0, 1 the first, 2, 3 the second.
            Assert.Contains("\"a red chair\"", output);
            Assert.Contains("\"a blue table\"", output);
            Assert.Contains("flow evaluations", output);
        }
        finally { Directory.Delete(Path.GetDirectoryName(text)!, true); }
    }

    [Fact]
    public void RandomTinyWithoutAPictureRunsOnRandomTokens()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        try
        {
            var log = new StringWriter();
            int rc = TrellisGenerateApp.Run(new[] { "--random-tiny", "--ss-steps", "1", "--slat-steps", "1", "--no-glb", "--preview-size", "0", "--out", Path.Combine(dir, "t") }, log);
            Assert.True(rc == 0, log.ToString());
            Assert.Contains("condition: random tokens [1, 8, 16]", log.ToString());
            Assert.True(GaussianPly.Read(Path.Combine(dir, "t_0.ply")).Count > 0);
            Assert.Empty(Directory.GetFiles(dir, "*.glb"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void SeveralViewsRunInBothMultiImageModes()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        var wide = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "wide_input.png");
        var tall = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "tall_input.png");
        foreach (var mode in new[] { "stochastic", "multidiffusion" })
        {
            var log = new StringWriter();
            int rc = TrellisGenerateApp.Run(new[] { "--random-tiny", "--image", wide, "--image", tall, "--multi-image", mode,
                "--ss-steps", "2", "--slat-steps", "2", "--out", Path.Combine(dir, mode) }, log);
            Assert.True(rc == 0, log.ToString());
            Assert.Contains("2 image(s) -> tokens [2, ", log.ToString());
            Assert.True(File.Exists(Path.Combine(dir, $"{mode}_0.ply")), log.ToString());
        }
    }

    [Fact]
    public void BadPicturesAreClearErrorsAndWriteNothing()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        var notImage = Path.Combine(dir, "notes.png");
        File.WriteAllText(notImage, "hello");
        var clear = Path.Combine(dir, "clear.png");
        using (var img = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgba32>(20, 20, new SixLabors.ImageSharp.PixelFormats.Rgba32(9, 9, 9, 40)))
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, clear);
        var opaque = Path.Combine(dir, "photo.png");
        using (var img = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgba32>(20, 20, new SixLabors.ImageSharp.PixelFormats.Rgba32(9, 9, 9, 255)))
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, opaque);
        var huge = Path.Combine(dir, "huge.png");
        File.WriteAllBytes(huge, MdtDist.Trellis.Tests.Conditioning.ImagePreprocessorTests.PngHeaderOnly(50_000, 40_000));
        foreach (var (file, expected) in new[] { (notImage, "not an image"), (clear, "no pixel with alpha"), (opaque, "--matting"), (huge, "50000 x 40000") })
        {
            var log = new StringWriter();
            var prefix = Path.Combine(dir, "out_" + Path.GetFileNameWithoutExtension(file));
            Assert.Equal(3, TrellisGenerateApp.Run(new[] { "--random-tiny", "--image", file, "--ss-steps", "1", "--slat-steps", "1", "--out", prefix }, log));
            Assert.Contains(expected, log.ToString());
            Assert.Contains(Path.GetFileName(file), log.ToString());
            Assert.Empty(Directory.GetFiles(dir, "out_*"));
        }
    }
}
