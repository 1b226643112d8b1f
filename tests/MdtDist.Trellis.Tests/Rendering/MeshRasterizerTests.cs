using MdtDist.Trellis.Rendering;
using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Rendering;

public class MeshRasterizerTests
{
    /// <summary>Area of the convex hull of 2D points (monotone chain + shoelace).</summary>
    private static double HullArea(List<(double X, double Y)> pts)
    {
        pts = pts.OrderBy(p => p.X).ThenBy(p => p.Y).ToList();
        static double Cross((double X, double Y) o, (double X, double Y) a, (double X, double Y) b) => (a.X - o.X) * (b.Y - o.Y) - (a.Y - o.Y) * (b.X - o.X);
        var hull = new List<(double X, double Y)>();
        foreach (var pass in new[] { pts, Enumerable.Reverse(pts).ToList() })
        {
            int start = hull.Count;
            foreach (var p in pass)
            {
                while (hull.Count >= start + 2 && Cross(hull[^2], hull[^1], p) <= 0) hull.RemoveAt(hull.Count - 1);
                hull.Add(p);
            }
            hull.RemoveAt(hull.Count - 1);
        }
        double area = 0;
        for (int i = 0; i < hull.Count; i++)
        {
            var (a, b) = (hull[i], hull[(i + 1) % hull.Count]);
            area += a.X * b.Y - b.X * a.Y;
        }
        return Math.Abs(area) / 2;
    }

    [Theory]
    [InlineData(0.0, 0.0, 2.0)]
    [InlineData(30.0, 20.0, 3.5)]   // oblique views from further away: at radius 2 the cube's corners leave the frame
    [InlineData(-70.0, -35.0, 3.5)]
    public void UnitCubeSilhouetteHasTheExpectedArea(double yawDeg, double pitchDeg, double radius)
    {
        const int res = 256;
        var cam = TrellisCamera.Orbit(yawDeg * Math.PI / 180, pitchDeg * Math.PI / 180, radius);
        using var cube = RenderTestData.UnitCube();
        using var r = MeshRasterizer.Render(cube, cam, new MeshRenderOptions { Resolution = res, Ssaa = 1 });
        double covered = r.Alpha.sum().item<double>();
        // The silhouette of a convex body is the convex hull of its projected vertices.
        var pts = new List<(double, double)>();
        for (int i = 0; i < 8; i++)
        {
            var (c, row, _) = cam.Project((i & 1) == 0 ? -0.5 : 0.5, (i & 2) == 0 ? -0.5 : 0.5, (i & 4) == 0 ? -0.5 : 0.5, res, res);
            Assert.InRange(c, 0, res - 1);
            Assert.InRange(row, 0, res - 1);
            pts.Add((c, row));
        }
        double expected = HullArea(pts);
        if (yawDeg == 0 && pitchDeg == 0 && radius == 2)
        {
            // Head-on: the silhouette is the front face at distance 1.5, a square of side F·1/1.5 pixels.
            double side = res * 0.5 / Math.Tan(20 * Math.PI / 180) / 1.5;
            Assert.Equal(side * side, expected, 6);
        }
        // Tolerance: each boundary pixel is counted or not by whether its centre is inside, an error of at most one pixel
        // per unit of perimeter that on straight edges mostly cancels; the perimeter is < 4·sqrt(area) + a few corners, so
        // the error is ~1e-3 of the area at this size; 1 % is the bound.
        Assert.True(Math.Abs(covered - expected) / expected < 0.01, $"covered {covered} px, expected {expected:F1} px");
    }

    [Fact]
    public void FrontViewDepthAndUnlitColourAreExact()
    {
        using var cube = RenderTestData.UnitCube(color: new[] { 0.9, 0.3, 0.1 });
        using var r = MeshRasterizer.Render(cube, TrellisCamera.Named("front"),
            new MeshRenderOptions { Resolution = 65, Ssaa = 1, Shading = MeshShading.Unlit, Background = new[] { 0.0, 0.0, 1.0 } });
        var c = r.Color.contiguous().data<double>().ToArray();
        var d = r.Depth!.contiguous().data<double>().ToArray();
        int centre = 32 * 65 + 32;
        Assert.Equal(1.5, d[centre], 12); // the face y = 0.5 seen from y = 2
        Assert.Equal(0.9, c[3 * centre], 12);
        Assert.Equal(0.3, c[3 * centre + 1], 12);
        Assert.Equal(0.1, c[3 * centre + 2], 12);
        // Corner pixel: background, depth 0, alpha 0.
        Assert.Equal(new[] { 0.0, 0.0, 1.0 }, c[..3]);
        Assert.Equal(0.0, d[0]);
        Assert.Equal(0.0, r.Alpha[0, 0].item<double>());
    }

    [Fact]
    public void LambertShadingDarkensObliqueFacesAndNormalsModeShowsWorldNormals()
    {
        using var cube = RenderTestData.UnitCube();
        var cam = TrellisCamera.Named("iso");
        using var lit = MeshRasterizer.Render(cube, cam, new MeshRenderOptions { Resolution = 64, Ssaa = 1, Ambient = 0.3 });
        var c = lit.Color.contiguous().data<double>().ToArray();
        var a = lit.Alpha.contiguous().data<double>().ToArray();
        var greys = Enumerable.Range(0, a.Length).Where(i => a[i] > 0).Select(i => c[3 * i]).ToList();
        // Default grey 0.8 × (0.3 + 0.7·|cos|): inside (0.8·0.3, 0.8], with three visible faces at different angles.
        Assert.All(greys, v => Assert.InRange(v, 0.8 * 0.3, 0.8 + 1e-12));
        Assert.True(greys.Max() - greys.Min() > 0.05);

        using var normals = MeshRasterizer.Render(cube, TrellisCamera.Named("front"), new MeshRenderOptions { Resolution = 33, Ssaa = 1, Shading = MeshShading.Normals });
        var n = normals.Color[16, 16].data<double>().ToArray();
        Assert.Equal(new[] { 0.5, 1.0, 0.5 }, n); // the face y = +0.5 has normal +y → (n + 1)/2
    }

    [Fact]
    public void RenderingIsDeterministicAndIndependentOfTheThreadCount()
    {
        using var scope = torch.NewDisposeScope();
        var gen = new Generator(11);
        var v = torch.rand(300, 3, dtype: ScalarType.Float32, generator: gen) - 0.5f;
        var f = torch.randint(0, 300, new long[] { 400, 3 }, generator: gen);
        var col = torch.rand(300, 3, dtype: ScalarType.Float32, generator: gen);
        using var mesh = new Mesh(v, f, col);
        var cam = TrellisCamera.Named("left");
        using var r1 = MeshRasterizer.Render(mesh, cam, new MeshRenderOptions { Resolution = 80 });
        using var r2 = MeshRasterizer.Render(mesh, cam, new MeshRenderOptions { Resolution = 80 });
        using var r3 = MeshRasterizer.Render(mesh, cam, new MeshRenderOptions { Resolution = 80, MaxDegreeOfParallelism = 1 });
        Assert.Equal(ScalarType.Float32, r1.Color.dtype);
        Assert.True(RenderTestData.Same(r1.Color, r2.Color));
        Assert.True(RenderTestData.Same(r1.Color, r3.Color));
        Assert.True(RenderTestData.Same(r1.Depth!, r3.Depth!));
        Assert.True(r1.Alpha.sum().item<float>() > 100);
    }

    [Fact]
    public void EmptyAndDegenerateMeshesGiveTheBackground()
    {
        var bg = new[] { 0.2, 0.4, 0.6 };
        var opts = new MeshRenderOptions { Resolution = 21, Background = bg };
        using var empty = Mesh.Empty();
        using var r = MeshRasterizer.Render(empty, TrellisCamera.Named("front"), opts);
        Assert.Equal(new long[] { 21, 21, 3 }, r.Color.shape);
        Assert.Equal(0.0, r.Alpha.abs().max().item<float>());
        var c = r.Color.contiguous().data<float>().ToArray();
        for (int i = 0; i < c.Length; i++) Assert.Equal(bg[i % 3], c[i], 6);

        // Faces that repeat a vertex or have collinear vertices cover nothing; a good face next to them still renders.
        using var scope = torch.NewDisposeScope();
        var v = torch.tensor(new[] { 0.0, 0, 0, 0.3, 0, 0, 0.6, 0, 0, 0, 0, 0.3, -0.3, 0, -0.3, 0.3, 0, -0.3 }, new long[] { 6, 3 }, ScalarType.Float64);
        using var degenerate = new Mesh(v, torch.tensor(new long[] { 0, 1, 2, 0, 0, 3, 1, 1, 1 }, new long[] { 3, 3 }));
        using var rd = MeshRasterizer.Render(degenerate, TrellisCamera.Named("front"), opts);
        Assert.Equal(0.0, rd.Alpha.max().item<double>());
        using var mixed = new Mesh(v, torch.tensor(new long[] { 0, 1, 2, 3, 4, 5, 1, 1, 1 }, new long[] { 3, 3 }));
        using var rm = MeshRasterizer.Render(mixed, TrellisCamera.Named("front"), opts);
        Assert.True(rm.Alpha.sum().item<double>() > 10);
    }

    [Fact]
    public void NaNVerticesAreRefusedNamingTheTensor()
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.tensor(new[] { 0.0, 0, 0, double.NaN, 0, 0, 0, 0, 1 }, new long[] { 3, 3 }, ScalarType.Float64);
        var ex = Assert.Throws<ArgumentException>(() => new Mesh(v, torch.tensor(new long[] { 0, 1, 2 }, new long[] { 1, 3 })));
        Assert.Contains("vertices", ex.Message);
    }

    [Fact]
    public void VoxelMeshKeepsOnlyExposedFacesAndRendersLikeTheCube()
    {
        using var scope = torch.NewDisposeScope();
        // Two neighbouring voxels: 12 faces − 2 shared = 10 quads = 20 triangles, 4 vertices per quad.
        using var pair = VoxelMesh.FromCoordinates(torch.tensor(new long[] { 0, 0, 0, 1, 0, 0, 1, 0, 0 }, new long[] { 3, 3 }), 4);
        Assert.Equal(20, pair.FaceCount);
        Assert.Equal(40, pair.VertexCount);
        // Outward orientation: every face normal points away from the pair's centre.
        var verts = pair.Vertices.to(ScalarType.Float64).data<double>().ToArray();
        var faces = pair.Faces.data<long>().ToArray();
        double[] centre = { -0.25, -0.375, -0.375 };
        for (int f = 0; f < 20; f++)
        {
            double[] p0 = verts[(int)(3 * faces[3 * f])..(int)(3 * faces[3 * f] + 3)], p1 = verts[(int)(3 * faces[3 * f + 1])..(int)(3 * faces[3 * f + 1] + 3)],
                p2 = verts[(int)(3 * faces[3 * f + 2])..(int)(3 * faces[3 * f + 2] + 3)];
            double[] a = { p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2] }, b = { p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2] };
            double[] n = { a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0] };
            double dot = n[0] * (p0[0] - centre[0]) + n[1] * (p0[1] - centre[1]) + n[2] * (p0[2] - centre[2]);
            Assert.True(dot > 0, $"face {f} points inwards");
        }

        // One voxel of a 1³ grid is the unit cube: same silhouette.
        using var one = VoxelMesh.FromCoordinates(torch.zeros(1, 3, dtype: ScalarType.Int32), 1, dtype: ScalarType.Float64);
        using var cube = RenderTestData.UnitCube();
        var cam = TrellisCamera.Named("iso");
        var opts = new MeshRenderOptions { Resolution = 64 };
        using var rv = MeshRasterizer.Render(one, cam, opts);
        using var rc = MeshRasterizer.Render(cube, cam, opts);
        Assert.True(rv.Alpha.allclose(rc.Alpha, rtol: 0, atol: 1e-12));

        Assert.Throws<ArgumentException>(() => VoxelMesh.FromCoordinates(torch.tensor(new long[] { 0, 0, 4 }, new long[] { 1, 3 }), 4));
        Assert.Throws<ArgumentException>(() => VoxelMesh.FromCoordinates(torch.zeros(2, 3), 4));
    }
}
