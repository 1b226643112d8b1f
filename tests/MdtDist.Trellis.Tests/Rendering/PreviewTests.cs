using MdtDist.Trellis.Rendering;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Rendering;

public sealed class PreviewTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "mdtdist-render-" + Guid.NewGuid().ToString("N"));

    public PreviewTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void CameraOrbitMatchesTrellisLookAt()
    {
        // yaw 0, pitch 0, r 2: eye (0, 2, 0); z = look − eye = (0, −1, 0); x = (−up) × z = (0,0,−1) × (0,−1,0) = (−1, 0, 0);
        // y = z × x = (0, 0, −1); t = −R·eye = (0, 0, 2). fx = 0.5 / tan(20°).
        var cam = TrellisCamera.Orbit(0, 0);
        double[] expected = { -1, 0, 0, 0, 0, 0, -1, 0, 0, -1, 0, 2 };
        for (int i = 0; i < 12; i++) Assert.Equal(expected[i], cam.Extrinsics[i], 14);
        Assert.Equal(0.5 / Math.Tan(20 * Math.PI / 180), cam.Fx, 14);
        Assert.Equal(40 * Math.PI / 180, cam.FovX, 14);
        var (x, y, z) = cam.Position;
        Assert.Equal((0.0, 2.0, 0.0), (Math.Round(x, 12), Math.Round(y, 12), Math.Round(z, 12)));

        // Every turntable camera sits at radius 2 looking at the origin (the origin projects to the image centre).
        var frames = TrellisCamera.Turntable(7);
        Assert.Equal(7, frames.Count);
        foreach (var c in frames)
        {
            var p = c.Position;
            Assert.Equal(2.0, Math.Sqrt(p.X * p.X + p.Y * p.Y + p.Z * p.Z), 12);
            var (col, row, depth) = c.Project(0, 0, 0, 100, 100);
            Assert.Equal(49.5, col, 10);
            Assert.Equal(49.5, row, 10);
            Assert.Equal(2.0, depth, 12);
        }
        Assert.Equal(0.25, Math.Asin(frames[0].Position.Z / 2), 12); // pitch 0.25 + 0.5·sin(0)

        Assert.Throws<ArgumentException>(() => TrellisCamera.Named("sideways"));
        Assert.Throws<ArgumentException>(() => TrellisCamera.Orbit(0, Math.PI / 2));
        foreach (var name in TrellisCamera.Names) Assert.NotNull(TrellisCamera.Named(name));
    }

    [Fact]
    public void TensorToImageUsesTrellisConversion()
    {
        using var t = torch.tensor(new[] { 0.0, 0.5, 1.0, 1.2, -0.1, double.NaN }, new long[] { 1, 2, 3 }, ScalarType.Float64);
        using var img = PreviewImages.ToImage(t);
        Assert.Equal((2, 1), (img.Width, img.Height));
        Assert.Equal(new Rgb24(0, 127, 255), img[0, 0]);
        Assert.Equal(new Rgb24(255, 0, 0), img[1, 0]);
        Assert.Throws<ArgumentException>(() => PreviewImages.ToImage(torch.zeros(3, 4, 4)));
    }

    [Fact]
    public void PngRoundTripsAndLeavesNoTemporaryFile()
    {
        using var scope = torch.NewDisposeScope();
        var t = torch.rand(9, 7, 3, dtype: ScalarType.Float64, generator: new Generator(5));
        var path = Path.Combine(_dir, "sub", "still.png");
        PreviewImages.SavePng(t, path);
        using var back = Image.Load<Rgb24>(path);
        using var expected = PreviewImages.ToImage(t);
        Assert.Equal((7, 9), (back.Width, back.Height));
        for (int y = 0; y < 9; y++)
            for (int x = 0; x < 7; x++) Assert.Equal(expected[x, y], back[x, y]);
        Assert.Single(Directory.GetFiles(Path.Combine(_dir, "sub")));
    }

    [Fact]
    public void GridPlacesCellsAndDrawsLabels()
    {
        var colours = new[] { new Rgb24(255, 0, 0), new Rgb24(0, 255, 0), new Rgb24(0, 0, 255) };
        var images = colours.Select(c => new Image<Rgb24>(30, 20, c)).ToList();
        try
        {
            var opts = new GridOptions { Padding = 4, LabelScale = 2 };
            using var grid = PreviewImages.Grid(images, 2, new[] { "A1", null, "front" }, opts);
            int labelH = 9 * 2; // (7 + 2) font rows × scale
            Assert.Equal(2 * 30 + 3 * 4, grid.Width);
            Assert.Equal(2 * (20 + labelH) + 3 * 4, grid.Height);
            Assert.Equal(colours[0], grid[4, 4]);
            Assert.Equal(colours[1], grid[4 + 30 + 4 + 29, 4 + 19]);
            Assert.Equal(colours[2], grid[4, 4 + 20 + labelH + 4]);
            int LabelPixels(int x0, int y0) =>
                Enumerable.Range(x0, 30).Sum(x => Enumerable.Range(y0 + 20, labelH).Count(y => grid[x, y].Equals(opts.LabelColor)));
            Assert.True(LabelPixels(4, 4) > 20);                 // "A1"
            Assert.Equal(0, LabelPixels(4 + 34, 4));             // no label
            Assert.True(LabelPixels(4, 4 + 20 + labelH + 4) > 20); // "front" (cut to the cell width)
        }
        finally
        {
            foreach (var i in images) i.Dispose();
        }
        Assert.Throws<ArgumentException>(() => PreviewImages.Grid(Array.Empty<Image<Rgb24>>(), 2));
    }

    [Fact]
    public void GifTurntableHasEveryFrame()
    {
        var frames = Enumerable.Range(0, 4).Select(i => new Image<Rgb24>(16, 12, new Rgb24((byte)(60 * i), 0, 0))).ToList();
        try
        {
            var path = Path.Combine(_dir, "spin.gif");
            PreviewImages.SaveGif(frames, path, frameDelayMs: 50);
            using var back = Image.Load<Rgb24>(path);
            Assert.Equal(4, back.Frames.Count);
            Assert.Equal(5, back.Frames[2].Metadata.GetGifMetadata().FrameDelay);
            Assert.Equal(0, back.Metadata.GetGifMetadata().RepeatCount);
            Assert.Equal(new Rgb24(120, 0, 0), back.Frames[2][3, 3]);

            // Frames of different sizes: refused before anything is written.
            frames.Add(new Image<Rgb24>(8, 8));
            var bad = Path.Combine(_dir, "bad.gif");
            Assert.Throws<ArgumentException>(() => PreviewImages.SaveGif(frames, bad));
            Assert.False(File.Exists(bad));
        }
        finally
        {
            foreach (var f in frames) f.Dispose();
        }
    }

    [Fact]
    public void SamplePreviewWritesAGridAndATurntable()
    {
        using var g = RenderTestData.TrellisLike(2000, seed: 2);
        using var mesh = RenderTestData.UnitCube(ScalarType.Float32, new[] { 0.2, 0.6, 0.9 }, half: 0.3);
        var prefix = Path.Combine(_dir, "sample_000");
        var written = Preview.SaveSample(prefix, g, mesh, new SamplePreviewOptions
        {
            Resolution = 48, Views = new[] { "front", "iso" }, TurntableFrames = 3, TurntableResolution = 32,
        });
        Assert.Equal(new[] { prefix + "_preview.png", prefix + "_turntable.gif" }, written);
        using var png = Image.Load<Rgb24>(written[0]);
        Assert.Equal(2 * 48 + 3 * 4, png.Width);       // two views
        Assert.Equal(2 * (48 + 18) + 3 * 4, png.Height); // Gaussians row + mesh row, labelled
        using var gif = Image.Load<Rgb24>(written[1]);
        Assert.Equal(3, gif.Frames.Count);
        Assert.Equal(2, Directory.GetFiles(_dir).Length);

        Assert.Throws<ArgumentException>(() => Preview.SaveSample(prefix, null, null));
    }

    [Fact]
    public void TrellisGenerateWritesAPreviewPerSample()
    {
        var log = new StringWriter();
        var prefix = Path.Combine(_dir, "t");
        var image = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "wide_input.png");
        int rc = TrellisGenerate.TrellisGenerateApp.Run(new[] { "--random-tiny", "--image", image, "--ss-steps", "1", "--slat-steps", "1", "--out", prefix,
            "--preview-size", "40", "--turntable-frames", "2" }, log);
        Assert.True(rc == 0, log.ToString());
        using var png = Image.Load<Rgb24>(prefix + "_0_preview.png");
        Assert.Equal(5 * 40 + 6 * 4, png.Width); // the five default views
        using var gif = Image.Load<Rgb24>(prefix + "_0_turntable.gif");
        Assert.Equal(2, gif.Frames.Count);
        Assert.Equal((40, 40), (gif.Width, gif.Height));
    }

    [Fact]
    public void VoxelsRenderFromANamedCamera()
    {
        using var scope = torch.NewDisposeScope();
        var coords = torch.tensor(new long[] { 1, 1, 1, 2, 1, 1, 1, 2, 1 }, new long[] { 3, 3 });
        using var img = Preview.RenderVoxels(coords, 4, "iso", 40);
        Assert.Equal((40, 40), (img.Width, img.Height));
        int lit = 0;
        for (int y = 0; y < 40; y++)
            for (int x = 0; x < 40; x++)
                if (img[x, y].R > 0) lit++;
        Assert.True(lit > 50);
    }
}
