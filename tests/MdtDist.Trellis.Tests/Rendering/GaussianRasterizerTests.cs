using MdtDist.Trellis.Rendering;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Rendering;

public class GaussianRasterizerTests
{
    // The front camera: eye (0, 2, 0) looking at the origin with +z up. Image right = world −x, image down = world −z,
    // depth of the plane y = 0 is 2. Focal length in pixels F = W·0.5/tan(20°).
    private const int W = 65; // odd, so the image centre ((W − 1)/2 = 32) is a pixel centre
    private static readonly double F = W * 0.5 / Math.Tan(20 * Math.PI / 180);

    private static double[] Alpha(RenderedImage r) => r.Alpha.contiguous().data<double>().ToArray();

    /// <summary>
    /// Closed form of one isotropic Gaussian (scale s, opacity o) at the centre of the front view: projected variance
    /// v = (F·s/2)², 2D filter k = 0.1, opacity × sqrt(v² / ((v + k)² + 1e-6) + 1e-6), α(d) = min(0.99, o'·exp(−d²/(2(v + k))))
    /// when ≥ 1/255, else 0.
    /// </summary>
    private static double ExpectedAlpha(double s, double o, double d2)
    {
        double v = Math.Pow(F * s / 2, 2), k = 0.1;
        double coef = Math.Sqrt(v * v / ((v + k) * (v + k) + 1e-6) + 1e-6);
        double a = Math.Min(0.99, o * coef * Math.Exp(-d2 / (2 * (v + k))));
        return a < 1.0 / 255 ? 0 : a;
    }

    [Theory]
    [InlineData(0.0672)]  // about 3 px standard deviation
    [InlineData(0.1344)]  // twice the scale
    public void OneIsotropicGaussianAtTheCentreIsARadialBlobOfTheExpectedWidth(double s)
    {
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, 0.0, 0.0 } }, new[] { s }, new[] { 0.8 }, new[] { new[] { 1.0, 0.5, 0.25 } });
        var bg = new[] { 0.1, 0.2, 0.3 };
        using var r = GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = W, Background = bg });
        Assert.Equal(new long[] { W, W, 3 }, r.Color.shape);
        Assert.Equal(ScalarType.Float64, r.Color.dtype);
        var a = Alpha(r);
        var c = r.Color.contiguous().data<double>().ToArray();

        // Peak where the camera model puts the centre: pixel (32, 32).
        int argmax = Array.IndexOf(a, a.Max());
        Assert.Equal((32, 32), (argmax / W, argmax % W));

        // Every pixel equals the closed form. Tolerance: both sides are float64 evaluations of the same expression; the
        // camera's sin/cos put the centre off the axis by ~1e-16 world units (~1e-14 px), so 1e-10 is generous.
        double worst = 0;
        for (int row = 0; row < W; row++)
            for (int col = 0; col < W; col++)
            {
                double d2 = (row - 32) * (row - 32) + (col - 32) * (col - 32);
                double e = ExpectedAlpha(s, 0.8, d2);
                worst = Math.Max(worst, Math.Abs(a[row * W + col] - e));
                // colour = α·c + (1 − α)·background
                double[] rgb = { 1.0, 0.5, 0.25 };
                for (int ch = 0; ch < 3; ch++)
                    Assert.Equal(e * rgb[ch] + (1 - e) * bg[ch], c[3 * (row * W + col) + ch], 10);
            }
        Assert.True(worst < 1e-10, $"max |alpha - closed form| = {worst}");

        // Radially symmetric: invariant under transposition and both mirror flips.
        for (int row = 0; row < W; row++)
            for (int col = 0; col < W; col++)
            {
                double v = a[row * W + col];
                Assert.Equal(v, a[col * W + row], 12);
                Assert.Equal(v, a[(W - 1 - row) * W + col], 12);
                Assert.Equal(v, a[row * W + (W - 1 - col)], 12);
            }

        // Width follows the scale: recover the projected variance from the falloff along the row through the centre
        // (pixels below the 0.99 clamp and above the 1/255 cut): −2·ln(α(d)/α(0)) / d² = 1/(v + k).
        double a0 = 0.8 * Math.Sqrt(Math.Pow(Math.Pow(F * s / 2, 2), 2) / (Math.Pow(Math.Pow(F * s / 2, 2) + 0.1, 2) + 1e-6) + 1e-6);
        int used = 0;
        for (int d = 1; d < 32; d++)
        {
            double ad = a[32 * W + 32 + d];
            if (ad <= 0 || ad >= 0.99) continue;
            double variance = -d * d / (2 * Math.Log(ad / a0)) - 0.1;
            Assert.Equal(Math.Pow(F * s / 2, 2), variance, 8);
            used++;
        }
        Assert.True(used >= 5, $"only {used} pixels in the unclamped falloff");
    }

    [Fact]
    public void AGaussianStopsAtTheTilesOfItsFootprintRectangleAsInTheCudaRasteriser()
    {
        // σ0 = F·s/2 = 5.1 px: λ = σ0² + 0.1 + sqrt(0.1) ≈ 26.4, radius = ceil(3·sqrt(λ)) = 16. Centre x = 32: the tile
        // rectangle is [(int)(16/16), (int)((32 + 16 + 15)/16)) = tiles [1, 3), pixels 16..47. So pixel 16 (16 px left)
        // still gets α ≈ 0.0067 > 1/255 while pixel 48 (16 px right) gets nothing.
        double s = 2 * 5.1 / F;
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, 0.0, 0.0 } }, new[] { s }, new[] { 0.9 }, new[] { new[] { 1.0, 1.0, 1.0 } });
        using var r = GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = W });
        var a = Alpha(r);
        double inside = ExpectedAlpha(s, 0.9, 16 * 16);
        Assert.InRange(inside, 1.0 / 255, 0.01);
        Assert.Equal(inside, a[32 * W + 16], 10);
        Assert.Equal(0.0, a[32 * W + 48]);
        Assert.Equal(0.0, a[48 * W + 32]);
        Assert.Equal(inside, a[16 * W + 32], 10);
    }

    [Fact]
    public void AnOffCentreGaussianLandsWhereTheCameraProjectsIt()
    {
        // World (0.2, 0, 0.1) from the front camera: camera coordinates (x, y, z) = (−0.2, −0.1, 2). TRELLIS's projection
        // gives ndc = 2·fx·x / (z + 1e-7) and pixel = ((ndc + 1)·W − 1)/2, i.e. col ≈ 32 − F·0.1, row ≈ 32 − F·0.05.
        // An isotropic Σ = s²I stays s²I in camera space, so the screen covariance is s²·J·Jᵀ + kI with
        // J = [[F/z, 0, −F·x/z²], [0, F/z, −F·y/z²]].
        double s = 0.05, o = 0.5, x = -0.2, y = -0.1, z = 2, k = 0.1;
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.2, 0.0, 0.1 } }, new[] { s }, new[] { o }, new[] { new[] { 1.0, 1.0, 1.0 } });
        using var r = GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = W });
        var a = Alpha(r);
        double fx = F / W;
        double expCol = ((2 * fx * x / (z + 1e-7) + 1) * W - 1) / 2, expRow = ((2 * fx * y / (z + 1e-7) + 1) * W - 1) / 2;
        Assert.Equal(32 - F * 0.1, expCol, 5);
        double j00 = F / z, j02 = -F * x / (z * z), j11 = F / z, j12 = -F * y / (z * z);
        double ca = s * s * (j00 * j00 + j02 * j02), cb = s * s * j02 * j12, cc = s * s * (j11 * j11 + j12 * j12);
        double det0 = ca * cc - cb * cb, det1 = (ca + k) * (cc + k) - cb * cb;
        double coef = Math.Sqrt(det0 / (det1 + 1e-6) + 1e-6);
        double ia = (cc + k) / det1, ib = -cb / det1, ic = (ca + k) / det1; // inverse of the filtered covariance
        int argmax = Array.IndexOf(a, a.Max());
        Assert.Equal(((int)Math.Round(expRow), (int)Math.Round(expCol)), (argmax / W, argmax % W));
        double worst = 0;
        for (int row = 0; row < W; row++)
            for (int col = 0; col < W; col++)
            {
                double dx = expCol - col, dy = expRow - row;
                double e = Math.Min(0.99, o * coef * Math.Exp(-0.5 * (ia * dx * dx + ic * dy * dy) - ib * dx * dy));
                if (e < 1.0 / 255) e = 0;
                worst = Math.Max(worst, Math.Abs(a[row * W + col] - e));
            }
        // Same float64 expression evaluated along a different route (rotation matrices, matrix products): 1e-10.
        Assert.True(worst < 1e-10, $"max |alpha - closed form| = {worst}");
    }

    [Fact]
    public void NearerGaussiansAreCompositedFirst()
    {
        // Red at y = 0.2 (depth 1.8), blue at y = −0.2 (depth 2.2), both on the axis; listed far-first to show the sort.
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, -0.2, 0.0 }, new[] { 0.0, 0.2, 0.0 } }, new[] { 0.05, 0.05 },
            new[] { 0.6, 0.6 }, new[] { new[] { 0.0, 0.0, 1.0 }, new[] { 1.0, 0.0, 0.0 } });
        using var r = GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = W });
        var c = r.Color.contiguous().data<double>().ToArray();
        var a = Alpha(r);
        int centre = 32 * W + 32;
        double red = c[3 * centre], blue = c[3 * centre + 2];
        // Front-to-back: C = α_r·red + (1 − α_r)·α_b·blue, final T = (1 − α_r)(1 − α_b).
        double ar = ExpectedAlphaAt(0.05, 0.6, 1.8), ab = ExpectedAlphaAt(0.05, 0.6, 2.2);
        Assert.Equal(ar, red, 10);
        Assert.Equal((1 - ar) * ab, blue, 10);
        Assert.Equal(1 - (1 - ar) * (1 - ab), a[centre], 10);
        Assert.True(red > blue);
    }

    private static double ExpectedAlphaAt(double s, double o, double depth)
    {
        double v = Math.Pow(F * s / depth, 2), k = 0.1;
        double coef = Math.Sqrt(v * v / ((v + k) * (v + k) + 1e-6) + 1e-6);
        return Math.Min(0.99, o * coef);
    }

    [Fact]
    public void RenderingIsDeterministicAndIndependentOfTheThreadCount()
    {
        using var g = RenderTestData.TrellisLike(3000, seed: 7);
        var cam = TrellisCamera.Named("iso");
        using var r1 = GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 96 });
        using var r2 = GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 96 });
        using var r3 = GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 96, MaxDegreeOfParallelism = 1 });
        Assert.Equal(ScalarType.Float32, r1.Color.dtype);
        Assert.True(RenderTestData.Same(r1.Color, r2.Color));
        Assert.True(RenderTestData.Same(r1.Color, r3.Color));
        Assert.True(RenderTestData.Same(r1.Alpha, r3.Alpha));
        // Something was drawn: the shell (radius 0.35 at distance 2, about 23 px in radius here) is partly covered.
        Assert.True(r1.Alpha.gt(0.1).sum().item<long>() > 1000);
    }

    [Fact]
    public void ZeroGaussiansGiveTheBackground()
    {
        var bg = new[] { 0.25, 0.5, 1.0 };
        using var empty = new MdtDist.Trellis.Representations.Gaussians(RenderTestData.Box);
        using var r = GaussianRasterizer.Render(empty, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = 17, Background = bg });
        Assert.Equal(new long[] { 17, 17, 3 }, r.Color.shape);
        Assert.Equal(0.0, r.Alpha.abs().max().item<float>());
        var c = r.Color.contiguous().data<float>().ToArray();
        for (int i = 0; i < c.Length; i++) Assert.Equal(bg[i % 3], c[i], 6);

        using var zero = RenderTestData.Isotropic(Array.Empty<double[]>(), Array.Empty<double>(), Array.Empty<double>(), Array.Empty<double[]>());
        using var r0 = GaussianRasterizer.Render(zero, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = 9 });
        Assert.Equal(0.0, r0.Color.abs().max().item<double>());
    }

    [Fact]
    public void GaussiansBehindTheCameraAreCulled()
    {
        // y = 2.5 is behind the eye at y = 2 (depth −0.5 ≤ 0.2): nothing is drawn.
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, 2.5, 0.0 } }, new[] { 0.1 }, new[] { 0.9 }, new[] { new[] { 1.0, 1.0, 1.0 } });
        using var r = GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = 33 });
        Assert.Equal(0.0, r.Alpha.max().item<double>());
    }

    [Fact]
    public void NaNParametersAreRefusedWithTheirRow()
    {
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, 0.0, 0.0 }, new[] { double.NaN, 0.0, 0.0 } }, new[] { 0.1, 0.1 },
            new[] { 0.5, 0.5 }, new[] { new[] { 1.0, 1.0, 1.0 }, new[] { 1.0, 1.0, 1.0 } });
        var ex = Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = 9 }));
        Assert.Contains("xyz", ex.Message);
        Assert.Contains("row 1", ex.Message);
    }

    [Fact]
    public void ACancelledTokenStopsRendering()
    {
        using var g = RenderTestData.TrellisLike(100, seed: 4);
        using var cube = RenderTestData.UnitCube();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => GaussianRasterizer.Render(g, TrellisCamera.Named("front"), new GaussianRenderOptions { Resolution = 64 }, cts.Token));
        Assert.ThrowsAny<OperationCanceledException>(() => MeshRasterizer.Render(cube, TrellisCamera.Named("front"), new MeshRenderOptions { Resolution = 64 }, cts.Token));
    }

    [Fact]
    public void BadOptionsAreRefused()
    {
        using var g = RenderTestData.TrellisLike(10, seed: 1);
        var cam = TrellisCamera.Named("front");
        Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 0 }));
        Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Ssaa = 0 }));
        Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Background = new[] { 0.0, 0.0 } }));
        Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { KernelSize = double.NaN }));
        Assert.Throws<ArgumentException>(() => GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { MaxDegreeOfParallelism = 0 }));
    }

    [Fact]
    public void SupersamplingAveragesBlocks()
    {
        using var g = RenderTestData.TrellisLike(500, seed: 3, ScalarType.Float64);
        var cam = TrellisCamera.Named("right");
        using var big = GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 64 });
        using var ss = GaussianRasterizer.Render(g, cam, new GaussianRenderOptions { Resolution = 32, Ssaa = 2 });
        using var pooled = big.Color.reshape(32, 2, 32, 2, 3).mean(new long[] { 1, 3 });
        Assert.True(ss.Color.allclose(pooled, rtol: 0, atol: 1e-12));
    }
}
