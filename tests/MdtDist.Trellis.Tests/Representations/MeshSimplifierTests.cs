using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public class MeshSimplifierTests
{
    [Fact]
    public void SphereStaysAClosedSphereAtAFifthOfItsFaces()
    {
        using var scope = torch.NewDisposeScope();
        const double r = 0.3;
        using var fc = MeshTestShapes.Sphere(16, r);
        using var extracted = FlexiCubes.Extract(fc);
        using var mesh = extracted.ToMesh();
        long target = mesh.FaceCount / 5;
        using var s = MeshSimplifier.Simplify(mesh, target);
        Assert.InRange(s.FaceCount, target * 9 / 10, target);
        var v = s.Vertices.data<double>().ToArray();
        var f = s.Faces.data<long>().ToArray();
        Assert.All(MeshTestShapes.EdgeUse(f).Values, c => Assert.Equal(2, c));           // still closed and manifold
        // quadric-optimal vertices stay on the tangent planes of the sphere: at ~300 faces the edge length is
        // ~0.07, and a vertex off the surface by more than 0.01 (a sagitta of 0.07²/(2r) ≈ 0.008) would be an error
        for (int i = 0; i < v.Length; i += 3)
        {
            double d = Math.Sqrt(v[i] * v[i] + v[i + 1] * v[i + 1] + v[i + 2] * v[i + 2]);
            Assert.InRange(d, r - 0.015, r + 0.01);
        }
        double ball = 4.0 / 3 * Math.PI * r * r * r;
        Assert.InRange(MeshTestShapes.SignedVolume(v, f), 0.9 * ball, 1.02 * ball);  // orientation kept
        Assert.NotNull(s.Colors);
        Assert.NotNull(s.Normals);
        // colours stay the interpolated (x + 1) / 2 up to the move of the vertex along x (≤ a few old edges of 1/16)
        var c = s.Colors!.data<double>().ToArray();
        for (int i = 0; i < v.Length / 3; i++) Assert.InRange(c[3 * i] - (v[3 * i] + 1) / 2, -0.07, 0.07);

        // deterministic
        using var again = MeshSimplifier.Simplify(mesh, target);
        Assert.True(again.Faces.eq(s.Faces).all().item<bool>());
        Assert.True(again.Vertices.eq(s.Vertices).all().item<bool>());
    }

    [Fact]
    public void FlatSquareKeepsItsOutlineAndArea()
    {
        using var scope = torch.NewDisposeScope();
        const int n = 12;
        var verts = new List<double>();
        var faces = new List<long>();
        for (int i = 0; i <= n; i++)
            for (int j = 0; j <= n; j++) { verts.Add((double)i / n); verts.Add((double)j / n); verts.Add(0); }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                long a = i * (n + 1) + j, b = a + n + 1;
                faces.AddRange(new[] { a, b, a + 1, a + 1, b, b + 1 });
            }
        using var mesh = new Mesh(torch.tensor(verts.ToArray(), new long[] { verts.Count / 3, 3 }), torch.tensor(faces.ToArray(), new long[] { faces.Count / 3, 3 }));
        using var s = MeshSimplifier.Simplify(mesh, 20);
        Assert.True(s.FaceCount <= 20);
        var v = s.Vertices.data<double>().ToArray();
        var f = s.Faces.data<long>().ToArray();
        double area = 0;
        for (int i = 0; i < f.Length; i += 3)
        {
            long a = 3 * f[i], b = 3 * f[i + 1], c = 3 * f[i + 2];
            area += ((v[b] - v[a]) * (v[c + 1] - v[a + 1]) - (v[b + 1] - v[a + 1]) * (v[c] - v[a])) / 2;   // signed, z = 0
        }
        // boundary planes keep the border on the unit square, so the area (and its sign: no flipped face) stays 1
        Assert.Equal(1.0, area, 9);
        for (int i = 0; i < v.Length; i += 3)
        {
            Assert.Equal(0.0, v[i + 2], 12);
            Assert.InRange(v[i], -1e-9, 1 + 1e-9);
            Assert.InRange(v[i + 1], -1e-9, 1 + 1e-9);
        }
    }

    [Fact]
    public void SmallMeshesAndBadTargetsAreHandled()
    {
        using var scope = torch.NewDisposeScope();
        using var oct = MeshTests.Octahedron();
        using var same = MeshSimplifier.Simplify(oct, 100);
        Assert.Equal(8, same.FaceCount);
        // an octahedron collapses down to a tetrahedron and stops there (one more collapse would fold it into two
        // coincident triangles)
        using var small = MeshSimplifier.Simplify(oct, 1);
        Assert.All(MeshTestShapes.EdgeUse(small.Faces.data<long>().ToArray()).Values, c => Assert.Equal(2, c));
        Assert.Equal(4, small.FaceCount);
        using var empty = Mesh.Empty();
        using var stillEmpty = MeshSimplifier.Simplify(empty, 10);
        Assert.True(stillEmpty.IsEmpty);
        Assert.Throws<ArgumentException>(() => MeshSimplifier.Simplify(oct, 0));
    }
}
