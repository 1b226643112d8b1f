using System.Diagnostics;
using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

/// <summary>The simplifier on a mesh of TRELLIS's size (≈ 200k triangles, what FlexiCubes gives at 256³).</summary>
public class LargeMeshSimplifierTests
{
    private readonly ITestOutputHelper _out;

    public LargeMeshSimplifierTests(ITestOutputHelper output) => _out = output;

    /// <summary>
    /// A closed "cube sphere" of radius <paramref name="r"/>: each face of the cube [-1, 1]³ cut into n×n squares (two
    /// triangles each, 12n² triangles), the lattice points welded along the cube's edges, then pushed onto the sphere.
    /// Counter-clockwise seen from outside. Optionally a colour per vertex, (x/r + 1)/2 in every channel.
    /// </summary>
    internal static Mesh CubeSphere(int n, double r, bool colors = false)
    {
        var index = new Dictionary<(int, int, int), int>();
        var pos = new List<double>();
        var faces = new List<long>();
        int Vertex(int i, int j, int k)
        {
            if (index.TryGetValue((i, j, k), out int v)) return v;
            double x = 2.0 * i / n - 1, y = 2.0 * j / n - 1, z = 2.0 * k / n - 1, len = Math.Sqrt(x * x + y * y + z * z);
            pos.Add(r * x / len); pos.Add(r * y / len); pos.Add(r * z / len);
            return index[(i, j, k)] = index.Count;
        }
        // each cube face: a fixed axis at 0 or n, and two in-plane axes (u, v) ordered so that u × v points outwards
        foreach (var (axis, side) in new[] { (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1) })
        {
            int ua = (axis + 1) % 3, va = (axis + 2) % 3;
            if (side == 0) (ua, va) = (va, ua);
            for (int a = 0; a < n; a++)
                for (int b = 0; b < n; b++)
                {
                    int V(int du, int dv)
                    {
                        var c = new int[3];
                        c[axis] = side * n; c[ua] = a + du; c[va] = b + dv;
                        return Vertex(c[0], c[1], c[2]);
                    }
                    int p00 = V(0, 0), p10 = V(1, 0), p11 = V(1, 1), p01 = V(0, 1);
                    faces.AddRange(new long[] { p00, p10, p11, p00, p11, p01 });
                }
        }
        using var scope = torch.NewDisposeScope();
        var vt = torch.tensor(pos.ToArray(), new long[] { pos.Count / 3, 3 }, ScalarType.Float64);
        var ft = torch.tensor(faces.ToArray(), new long[] { faces.Count / 3, 3 });
        var ct = colors ? ((vt[.., 0..1] / r + 1) / 2).expand(-1, 3).contiguous() : null;
        return new Mesh(vt, ft, ct);
    }

    [Fact]
    public void A200kTriangleSphereSimplifiesToFivePercentAndStaysASphere()
    {
        using var scope = torch.NewDisposeScope();
        const double r = 0.4;
        using var mesh = CubeSphere(130, r, colors: true);
        Assert.Equal(12 * 130 * 130, mesh.FaceCount);
        Assert.Equal(mesh.FaceCount / 2 + 2, mesh.VertexCount);   // Euler: V − E + F = 2 with E = 3F/2
        var fIn = mesh.Faces.data<long>().ToArray();
        Assert.All(MeshTestShapes.EdgeUse(fIn).Values, c => Assert.Equal(2, c));
        Assert.InRange(MeshTestShapes.SignedVolume(mesh.Vertices.data<double>().ToArray(), fIn), 0.99 * 4.0 / 3 * Math.PI * r * r * r, 4.0 / 3 * Math.PI * r * r * r);

        long target = mesh.FaceCount / 20;
        var sw = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        using var s = MeshSimplifier.Simplify(mesh, target);
        cpu = Process.GetCurrentProcess().TotalProcessorTime - cpu;
        // printed only (no verdict on time): wall clock depends on the load; the process CPU time includes other tests' threads
        _out.WriteLine($"{mesh.FaceCount} → {s.FaceCount} triangles (target {target}) in {sw.Elapsed.TotalSeconds:F2} s wall, {cpu.TotalSeconds:F2} s process CPU");
        Assert.InRange(s.FaceCount, target * 9 / 10, target);
        var v = s.Vertices.data<double>().ToArray();
        var f = s.Faces.data<long>().ToArray();
        Assert.All(MeshTestShapes.EdgeUse(f).Values, c => Assert.Equal(2, c));   // closed and manifold
        // ≈ 10k triangles on a sphere of radius 0.4: edge length ≈ sqrt(4πr²/(F·√3/4)) ≈ 0.03, sagitta 0.03²/(2r) ≈ 0.001;
        // quadric-optimal vertices sit on the tangent planes (outside by at most a sagitta-sized amount)
        for (int i = 0; i < v.Length; i += 3)
            Assert.InRange(Math.Sqrt(v[i] * v[i] + v[i + 1] * v[i + 1] + v[i + 2] * v[i + 2]), r - 0.005, r + 0.005);
        double ball = 4.0 / 3 * Math.PI * r * r * r;
        Assert.InRange(MeshTestShapes.SignedVolume(v, f), 0.98 * ball, 1.01 * ball);
    }
}
