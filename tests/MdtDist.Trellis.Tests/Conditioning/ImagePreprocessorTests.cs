using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Tests.Golden;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>
/// ImageSharp preprocessing against TRELLIS's own <c>preprocess_image</c> output (PIL 9.4, TestData/image_preprocess)
/// and the effect of the difference on the condition tokens of the tiny DINOv2 (golden case dinov2_native weights).
/// </summary>
public class ImagePreprocessorTests(ITestOutputHelper output)
{
    private static string Data(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    /// <summary>max and mean |ours − PIL| over all RGB values, in units of 1/255.</summary>
    public static (int Max, double Mean) Difference(Image<Rgb24> a, Image<Rgb24> b)
    {
        Assert.Equal(a.Width, b.Width);
        Assert.Equal(a.Height, b.Height);
        int max = 0;
        long sum = 0, n = 0;
        for (int y = 0; y < a.Height; y++)
            for (int x = 0; x < a.Width; x++)
            {
                var p = a[x, y];
                var q = b[x, y];
                foreach (var d in new[] { Math.Abs(p.R - q.R), Math.Abs(p.G - q.G), Math.Abs(p.B - q.B) })
                {
                    max = Math.Max(max, d);
                    sum += d;
                    n++;
                }
            }
        return (max, (double)sum / n);
    }

    [Theory]
    [InlineData("wide", ImageResampler.Pil)]
    [InlineData("tall", ImageResampler.Pil)]
    [InlineData("wide", ImageResampler.ImageSharpLanczos3)]
    [InlineData("tall", ImageResampler.ImageSharpLanczos3)]
    public void MatchesTrellisPreprocessing(string name, ImageResampler resampler)
    {
        var pre = new ImagePreprocessor(new ImagePreprocessOptions { Resampler = resampler });
        using var input = pre.Load(Data($"image_preprocess/{name}_input.png"));
        using var ours = pre.Preprocess(input, name);
        using var expected = Image.Load<Rgb24>(Data($"image_preprocess/{name}_expected.png"));
        Assert.Equal(518, ours.Width);
        Assert.Equal(518, ours.Height);
        var (max, mean) = Difference(ours, expected);

        // Effect on the condition tokens: the tiny DINOv2 (golden weights, float64) on both 518² images.
        using var c = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "dinov2_native.json"));
        using var noGrad = torch.no_grad();
        using var model = new Dinov2Model(Dinov2GoldenRunner.ConfigOf(c), ScalarType.Float64);
        TrellisCheckpoint.LoadStateDict(model, c.WithPrefix("model."), strict: true);
        model.eval();
        using var scope = torch.NewDisposeScope();
        var a = model.forward(ImagePreprocessor.ToTensor(new[] { ours }, ScalarType.Float64));
        var b = model.forward(ImagePreprocessor.ToTensor(new[] { expected }, ScalarType.Float64));
        double tokRel = GoldenAssert.RelativeError(b, a);
        double tokMeanAbs = (a - b).abs().mean().item<double>();
        output.WriteLine($"{name} {resampler}: pixels max |diff| {max}/255, mean {mean:F4}/255; tiny-DINOv2 cond max rel {tokRel:E2}, mean |diff| {tokMeanAbs:E2}");

        if (resampler == ImageResampler.Pil)
        {
            // The PIL path reproduces PIL's integer arithmetic step by step: every byte must be equal.
            Assert.Equal(0, max);
        }
        else
        {
            // ImageSharp: same crop and kernel, float arithmetic. Where alpha is small, PIL's un-premultiply (255·c/a in
            // integers) turns a one-byte difference of the premultiplied value into up to 255/a bytes before TRELLIS
            // multiplies by alpha again, so soft edges differ by tens of units while the mean stays a fraction of one;
            // a wrong crop or kernel would move every edge (mean of several units).
            Assert.True(mean < 0.5, $"{name}: mean difference {mean:F3}/255");
        }
    }

    [Fact]
    public void NotAnImageNoOpaquePixelAndHugeImagesFailClearly()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-img-");
        try
        {
            var pre = new ImagePreprocessor();
            var text = Path.Combine(dir.FullName, "photo.png");
            File.WriteAllText(text, "not a picture");
            var e1 = Assert.Throws<InvalidDataException>(() => pre.Load(text));
            Assert.Contains(text, e1.Message);

            using (var clear = new Image<Rgba32>(40, 30, new Rgba32(255, 0, 0, 100)))
            {
                var e2 = Assert.Throws<InvalidDataException>(() => pre.Preprocess(clear, "clear.png"));
                Assert.Contains("clear.png", e2.Message);
                Assert.Contains("no pixel with alpha", e2.Message);
            }

            using (var opaque = new Image<Rgba32>(40, 30, new Rgba32(10, 20, 30, 255)))
            {
                var e3 = Assert.Throws<InvalidDataException>(() => pre.Preprocess(opaque, "photo.jpg"));
                Assert.Contains("matting model", e3.Message);
                Assert.Contains("--matting", e3.Message);
            }

            var huge = Path.Combine(dir.FullName, "huge.png");
            File.WriteAllBytes(huge, PngHeaderOnly(100_000, 100_000));
            var e4 = Assert.Throws<InvalidDataException>(() => pre.Load(huge));
            Assert.Contains("100000 x 100000", e4.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    /// <summary>A PNG signature + IHDR (RGBA, 8 bit) claiming the given size + an empty IEND: enough for a header check.</summary>
    public static byte[] PngHeaderOnly(int width, int height)
    {
        var ms = new MemoryStream();
        ms.Write(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A });
        var ihdr = new byte[13];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8;
        ihdr[9] = 6;
        Chunk(ms, "IHDR", ihdr);
        Chunk(ms, "IEND", Array.Empty<byte>());
        return ms.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var len = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        var body = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(body);
        var crc = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(body));
        s.Write(crc);
    }

    private static uint Crc32(byte[] data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return c ^ 0xFFFFFFFF;
    }
}
