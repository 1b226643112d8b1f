using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using MdtDist.Trellis.Rendering;
using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Preview rendering on the CPU: one 512² frame of 100k Gaussians shaped like a decoded TRELLIS object (a shell of radius
/// 0.35 with TRELLIS's Gaussian-decoder biases: softplus scales ≈ 0.004–0.012, 3D filter 9e-4, mostly opaque), seen from
/// TRELLIS's preview camera (radius 2, FoV 40°); and one 512² frame (2× supersampled) of the cube mesh of a 64³ voxel
/// shell (TRELLIS's stage-1 output size).
/// </summary>
[Config(typeof(InProcessShortRunConfig))]
public class RenderBenchmarks
{
    /// <summary>BenchmarkDotNet's ShortRun job, in process (TorchSharp's native libraries do not reach a generated child project).</summary>
    private sealed class InProcessShortRunConfig : ManualConfig
    {
        public InProcessShortRunConfig() => AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance));
    }

    private Gaussians _gaussians = null!;
    private Mesh _mesh = null!;
    private readonly TrellisCamera _camera = TrellisCamera.Named("iso");

    /// <summary>Number of Gaussians.</summary>
    [Params(100_000)]
    public int Count { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _gaussians = new Gaussians(new[] { -0.5, -0.5, -0.5, 1, 1, 1 }, 0, 9e-4, 4e-3, 0.1, GaussianScalingActivation.Softplus);
        using (var scope = torch.NewDisposeScope())
        {
            var gen = new Generator(1);
            var dir = torch.nn.functional.normalize(torch.randn(Count, 3, generator: gen), p: 2, dim: 1);
            var xyz = dir * (0.35f + 0.03f * torch.randn(Count, 1, generator: gen)) + 0.5f;
            var fdc = (torch.rand(Count, 1, 3, generator: gen) - 0.5f) / 0.28209479177387814f;
            _gaussians.SetParameters(xyz, fdc, 0.5f * torch.randn(Count, 3, generator: gen), 0.5f * torch.randn(Count, 4, generator: gen),
                2 + 2 * torch.randn(Count, 1, generator: gen));
        }
        using var c = StructureShapes.Shell(23, thickness: 2)[.., 1..].to(ScalarType.Int64);   // 21 ≤ r < 23
        _mesh = VoxelMesh.FromCoordinates(c, 64);
        Console.WriteLine($"// voxel shell: {c.shape[0]} voxels, {_mesh.FaceCount} triangles");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _gaussians.Dispose();
        _mesh.Dispose();
    }

    [Benchmark(Description = "Gaussians: one 512² frame")]
    public void GaussianFrame()
    {
        using var r = GaussianRasterizer.Render(_gaussians, _camera, new GaussianRenderOptions { Resolution = 512 });
    }

    [Benchmark(Description = "Gaussians: projection only (activations + EWA)")]
    public void GaussianProjection()
    {
        GaussianRasterizer.Project(_gaussians, _camera, 512, 512, new GaussianRenderOptions());
    }

    [Benchmark(Description = "voxel-shell mesh: one 512² frame, 2× SSAA")]
    public void MeshFrame()
    {
        using var r = MeshRasterizer.Render(_mesh, _camera, new MeshRenderOptions { Resolution = 512, Ssaa = 2 });
    }
}
