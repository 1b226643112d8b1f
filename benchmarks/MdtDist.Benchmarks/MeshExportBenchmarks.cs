using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using MdtDist.Trellis.Export;
using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Mesh export work on a mesh of TRELLIS's size: quadric simplification of a 202 800-triangle closed sphere (radius 0.35)
/// to 5 % (TRELLIS's <c>to_glb</c> default), and vertex colours sampled from 100k Gaussians on the same sphere.
/// </summary>
[Config(typeof(InProcessShortRunConfig))]
public class MeshExportBenchmarks
{
    /// <summary>BenchmarkDotNet's ShortRun job, in process (TorchSharp's native libraries do not reach a generated child project).</summary>
    private sealed class InProcessShortRunConfig : ManualConfig
    {
        public InProcessShortRunConfig() => AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance));
    }

    private Mesh _mesh = null!;
    private Gaussians _gaussians = null!;

    [GlobalSetup]
    public void Setup()
    {
        _mesh = CubeSphere(130, 0.35);
        const int count = 100_000;
        _gaussians = new Gaussians(new[] { -0.5, -0.5, -0.5, 1, 1, 1 }, 0, 9e-4, 4e-3, 0.1, GaussianScalingActivation.Softplus);
        using var scope = torch.NewDisposeScope();
        var gen = new Generator(1);
        var dir = torch.nn.functional.normalize(torch.randn(count, 3, generator: gen), p: 2, dim: 1);
        var xyz = dir * (0.35f + 0.005f * torch.randn(count, 1, generator: gen)) + 0.5f;
        var fdc = (torch.rand(count, 1, 3, generator: gen) - 0.5f) / 0.28209479177387814f;
        _gaussians.SetParameters(xyz, fdc, 0.5f * torch.randn(count, 3, generator: gen), 0.5f * torch.randn(count, 4, generator: gen),
            2 + 2 * torch.randn(count, 1, generator: gen));
        Console.WriteLine($"// sphere: {_mesh.VertexCount} vertices, {_mesh.FaceCount} triangles; {count} Gaussians");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _mesh.Dispose();
        _gaussians.Dispose();
    }

    /// <summary>Simplify to 5 % of the triangles.</summary>
    [Benchmark]
    public long Simplify()
    {
        using var s = MeshSimplifier.Simplify(_mesh, _mesh.FaceCount / 20);
        return s.FaceCount;
    }

    /// <summary>One colour per vertex from the Gaussians (default bandwidth).</summary>
    [Benchmark]
    public long ColorsFromGaussians()
    {
        using var c = GaussianVertexColors.Sample(_mesh, _gaussians);
        return c.shape[0];
    }

    /// <summary>The cube [-1, 1]³ with each face cut into n×n squares (12n² triangles), welded, pushed onto a sphere of radius r.</summary>
    private static Mesh CubeSphere(int n, double r)
    {
        var index = new Dictionary<(int, int, int), int>();
        var pos = new List<float>();
        var faces = new List<long>();
        int Vertex(int i, int j, int k)
        {
            if (index.TryGetValue((i, j, k), out int v)) return v;
            double x = 2.0 * i / n - 1, y = 2.0 * j / n - 1, z = 2.0 * k / n - 1, len = Math.Sqrt(x * x + y * y + z * z);
            pos.Add((float)(r * x / len)); pos.Add((float)(r * y / len)); pos.Add((float)(r * z / len));
            return index[(i, j, k)] = index.Count;
        }
        foreach (var (axis, side) in new[] { (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1) })
        {
            int ua = (axis + 1) % 3, va = (axis + 2) % 3;
            if (side == 0) (ua, va) = (va, ua);   // u × v points outwards
            var c = new int[3];
            for (int a = 0; a < n; a++)
                for (int b = 0; b < n; b++)
                {
                    int V(int du, int dv) { c[axis] = side * n; c[ua] = a + du; c[va] = b + dv; return Vertex(c[0], c[1], c[2]); }
                    int p00 = V(0, 0), p10 = V(1, 0), p11 = V(1, 1), p01 = V(0, 1);
                    faces.AddRange(new long[] { p00, p10, p11, p00, p11, p01 });
                }
        }
        using var scope = torch.NewDisposeScope();
        return new Mesh(torch.tensor(pos.ToArray(), new long[] { pos.Count / 3, 3 }), torch.tensor(faces.ToArray(), new long[] { faces.Count / 3, 3 }));
    }
}
