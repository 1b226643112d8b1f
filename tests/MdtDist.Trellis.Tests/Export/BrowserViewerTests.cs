using MdtDist.Trellis.Export;
using MdtDist.Trellis.Tests.Rendering;
using SharpGLTF.Schema2;
using SixLabors.ImageSharp;
using Image = SixLabors.ImageSharp.Image;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace MdtDist.Trellis.Tests.Export;

/// <summary>
/// GLB files open in a web viewer: headless Chromium + three.js's GLTFLoader (see <see cref="HeadlessBrowser"/>) loads
/// them without an error and draws them where the viewer's framing puts them, in their vertex colours. The screenshots
/// are kept under the test output (<c>artifacts/browser/</c>).
/// </summary>
public class BrowserViewerTests
{
    private const int Size = 512;

    // The viewer (tools/glb-viewer/viewer.html) frames the bounding sphere (centre c, radius r) with a 40° vertical
    // field of view so that the sphere's angular radius is asin(0.8·sin 20°) (it "fills 80 % of the height"). A sphere of
    // radius k·r about c then projects inside/around a disk about the image centre of radius
    //   R(k) = tan(asin(0.8·k·sin 20°)) / tan 20° · Size/2   pixels
    // (exact for the outline of a centred sphere seen head-on: its silhouette cone has that half-angle).
    private static double DiskRadius(double k)
    {
        double half = 20 * Math.PI / 180;
        return Math.Tan(Math.Asin(0.8 * k * Math.Sin(half))) / Math.Tan(half) * Size / 2;
    }

    private static readonly Lazy<Image<Rgb24>> EmptyRender = new(() =>
    {
        var path = ArtifactPath("empty.png");
        var report = HeadlessBrowser.Open(null, path, Size, Size);
        Assert.True(report.Status == "empty" && report.Errors.Count == 0, report.Json);
        return Image.Load<Rgb24>(path);
    });

    private readonly ITestOutputHelper _out;

    public BrowserViewerTests(ITestOutputHelper output) => _out = output;

    private static string ArtifactPath(string name) => Path.Combine(AppContext.BaseDirectory, "artifacts", "browser", name);

    [Fact]
    public void RedCubeGlbIsDrawnRedWhereTheViewerFramesIt()
    {
        if (!BrowserAvailable()) return;
        using var scope = torch.NewDisposeScope();
        using var cube = RenderTestData.UnitCube(color: new[] { 1.0, 0.0, 0.0 });
        var glb = MeshGlb.ToBytes(cube);
        var path = ArtifactPath("red-cube.png");
        var report = HeadlessBrowser.Open(glb, path, Size, Size);
        _out.WriteLine(report.Json);
        AssertLoaded(report, glb);

        using var shot = Image.Load<Rgb24>(path);
        var empty = EmptyRender.Value;
        Assert.Equal((Size, Size), (shot.Width, shot.Height));
        // The unit cube's bounding sphere has r = √3/2; it contains the inscribed sphere (radius r/√3), whose outline is a
        // disk of radius R(1/√3) ≈ 112 px (area ≈ 15 % of the image), and lies inside the disk of radius R(1) ≈ 200 px.
        // So at least 10 % of the image must be red, and nothing outside R(1) + 2 px (rasterisation) may differ from the
        // empty page. Red: vertex colour (1, 0, 0) × any lighting keeps g = b = 0; r > 100 leaves room for shading.
        double inner = DiskRadius(1 / Math.Sqrt(3)), outer = DiskRadius(1) + 2;
        long red = 0, changedOutside = 0, redInsideInner = 0, innerCount = 0;
        for (int y = 0; y < Size; y++)
            for (int x = 0; x < Size; x++)
            {
                var p = shot[x, y];
                double d = Math.Sqrt(Math.Pow(x + 0.5 - Size / 2.0, 2) + Math.Pow(y + 0.5 - Size / 2.0, 2));
                bool isRed = p.R > 100 && p.G < 30 && p.B < 30;
                if (isRed) red++;
                if (d > outer && !p.Equals(empty[x, y])) changedOutside++;
                if (d < inner - 2) { innerCount++; if (isRed) redInsideInner++; }
            }
        _out.WriteLine($"red {red} px ({100.0 * red / (Size * Size):F1} %), inner disk {redInsideInner}/{innerCount} red, changed outside {changedOutside}");
        Assert.Equal(innerCount, redInsideInner);
        Assert.InRange(red, (long)(0.10 * Size * Size), (long)(Math.PI * outer * outer));
        Assert.Equal(0, changedOutside);
    }

    [Fact]
    public void DecodedMeshGlbLoadsWithoutErrorAndIsDrawn()
    {
        if (!BrowserAvailable()) return;
        using var scope = torch.NewDisposeScope();
        using var mesh = MeshGlbTests.DecodedMesh();
        var glb = MeshGlb.ToBytes(mesh);
        var path = ArtifactPath("decoded-mesh.png");
        var report = HeadlessBrowser.Open(glb, path, Size, Size);
        _out.WriteLine(report.Json);
        AssertLoaded(report, glb);

        using var shot = Image.Load<Rgb24>(path);
        var empty = EmptyRender.Value;
        // Everything drawn lies inside the bounding sphere's disk R(1) (+2 px); a closed surface seen from outside covers
        // a good part of it: ask for 3 % of the image (the decoded sample is a small irregular shape, not a ball).
        double outer = DiskRadius(1) + 2;
        long changed = 0, changedOutside = 0, coloured = 0;
        for (int y = 0; y < Size; y++)
            for (int x = 0; x < Size; x++)
            {
                var p = shot[x, y];
                if (p.Equals(empty[x, y])) continue;
                changed++;
                if (Math.Max(p.R, Math.Max(p.G, p.B)) - Math.Min(p.R, Math.Min(p.G, p.B)) > 8) coloured++;
                double d = Math.Sqrt(Math.Pow(x + 0.5 - Size / 2.0, 2) + Math.Pow(y + 0.5 - Size / 2.0, 2));
                if (d > outer) changedOutside++;
            }
        _out.WriteLine($"changed {changed} px ({100.0 * changed / (Size * Size):F1} %), coloured {coloured}, outside the bounding disk {changedOutside}");
        Assert.True(changed > 0.03 * Size * Size, $"only {changed} pixels differ from the empty page");
        Assert.Equal(0, changedOutside);
        Assert.True(coloured > changed / 2, $"only {coloured} of {changed} drawn pixels are not grey: vertex colours not shown");
    }

    [Fact]
    public void ABrokenGlbIsReportedAsAnError()
    {
        if (!BrowserAvailable()) return;
        using var scope = torch.NewDisposeScope();
        using var cube = RenderTestData.UnitCube(color: new[] { 1.0, 0.0, 0.0 });
        var glb = MeshGlb.ToBytes(cube);
        var broken = glb[..(glb.Length / 2)];          // truncated: the header's length no longer matches
        Directory.CreateDirectory(Path.GetDirectoryName(ArtifactPath("broken.glb"))!);
        File.WriteAllBytes(ArtifactPath("broken.glb"), broken);
        var report = HeadlessBrowser.Open(broken, ArtifactPath("broken.png"), 128, 128);
        _out.WriteLine(report.Json);
        Assert.Equal("error", report.Status);
        Assert.NotEmpty(report.Errors);
    }

    private void AssertLoaded(HeadlessBrowser.Report report, byte[] glb)
    {
        Assert.True(report.Status == "loaded" && report.Errors.Count == 0, report.Json);
        var prim = ModelRoot.ReadGLB(new MemoryStream(glb)).LogicalMeshes.Single().Primitives.Single();
        Assert.Equal(1, report.Meshes);
        Assert.Equal(prim.GetVertexAccessor("POSITION").Count, report.Vertices);
        Assert.Equal(prim.GetTriangleIndices().Count(), report.Triangles);
        Assert.True(report.VertexColors, "the viewer did not use COLOR_0");
    }

    private bool BrowserAvailable()
    {
        if (HeadlessBrowser.Missing is { } why)
        {
            Assert.False(HeadlessBrowser.Required, $"browser check required (MDTDIST_REQUIRE_BROWSER=1) but cannot run: {why}");
            _out.WriteLine($"browser check skipped: {why}");
            return false;
        }
        return true;
    }
}
