using MdtDist.Trellis.Representations;
using TrellisGenerate;
using Xunit;

namespace MdtDist.Trellis.Tests.Pipeline;

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
