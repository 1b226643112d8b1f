using MdtDist.Trellis.Conditioning;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>Background removal through ONNX Runtime with a tiny hand-written ONNX model (see <see cref="TinyOnnx"/>).</summary>
public class OnnxMattingTests
{
    [Fact]
    public void OpaquePictureIsCutOutByTheOnnxModelAndPreprocessed()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-onnx-");
        try
        {
            var model = Path.Combine(dir.FullName, "tiny_matting.onnx");
            File.WriteAllBytes(model, TinyOnnx.ChannelMeanMatting(32));
            using var matting = new OnnxMatting(model, inputSize: 32);
            // An opaque 64 x 48 picture: a white 20 x 16 square at (30, 10) on black.
            using var photo = new Image<Rgba32>(64, 48, new Rgba32(0, 0, 0, 255));
            for (int y = 10; y < 26; y++)
                for (int x = 30; x < 50; x++) photo[x, y] = new Rgba32(255, 255, 255, 255);

            using var cut = matting.RemoveBackground(photo);
            Assert.Equal(64, cut.Width);
            // The matte is the channel mean min-max normalised: ~255 inside the square, ~0 far outside.
            Assert.True(cut[40, 18].A > 230, $"alpha inside {cut[40, 18].A}");
            Assert.True(cut[5, 40].A < 25, $"alpha outside {cut[5, 40].A}");

            var pre = new ImagePreprocessor(new ImagePreprocessOptions { Matting = matting });
            using var result = pre.Preprocess(photo, "photo");
            Assert.Equal(518, result.Width);
            // The crop is centred on the square, 1.2x its size: the centre is white, the corners black.
            Assert.True(result[259, 259].R > 200, $"centre {result[259, 259].R}");
            Assert.True(result[3, 3].R < 30, $"corner {result[3, 3].R}");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void MissingOrInvalidModelFilesFailNamingTheFile()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-onnx-");
        try
        {
            var missing = Path.Combine(dir.FullName, "u2net.onnx");
            Assert.Contains(missing, Assert.Throws<FileNotFoundException>(() => new OnnxMatting(missing)).Message);
            File.WriteAllText(missing, "garbage");
            Assert.Contains(missing, Assert.Throws<InvalidDataException>(() => new OnnxMatting(missing)).Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private sealed class RecordingMatting : IImageMatting
    {
        public (int W, int H)? Seen { get; private set; }

        public Image<Rgba32> RemoveBackground(Image<Rgba32> image)
        {
            Seen = (image.Width, image.Height);
            var cut = image.Clone();
            cut.ProcessPixelRows(acc =>
            {
                for (int y = 0; y < acc.Height; y++)
                    foreach (ref var p in acc.GetRowSpan(y)) p.A = p.R;   // bright = foreground
            });
            return cut;
        }
    }

    [Fact]
    public void LargeOpaquePicturesAreDownscaledTo1024BeforeMattingAsTrellisDoes()
    {
        var matting = new RecordingMatting();
        using var photo = new Image<Rgba32>(1500, 1000, new Rgba32(0, 0, 0, 255));
        for (int y = 400; y < 600; y++)
            for (int x = 600; x < 900; x++) photo[x, y] = new Rgba32(255, 255, 255, 255);
        var pre = new ImagePreprocessor(new ImagePreprocessOptions { Matting = matting });
        using var result = pre.Preprocess(photo, "photo");
        // scale = 1024 / 1500; int(1500 * scale) = 1024, int(1000 * scale) = 682.
        Assert.Equal((1024, 682), matting.Seen);
        Assert.True(result[259, 259].R > 200);
    }
}
