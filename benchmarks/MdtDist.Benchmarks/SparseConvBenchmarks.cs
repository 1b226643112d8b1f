using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// One 3×3×3 submanifold convolution (128 → 128 channels, float32, CPU) on ~20k active voxels of a 64³ grid (a spherical
/// shell, as TRELLIS's structures are surfaces), next to a dense GEMM with the same FLOPs
/// (<c>[N, 27·128] × [27·128, 128]</c>). The neighbour map is cached on the coordinates (as in every step of a sampler);
/// <see cref="SubMConvColdMap"/> also rebuilds it.
/// </summary>
[Config(typeof(InProcessShortRunConfig))]
public class SparseConvBenchmarks
{
    /// <summary>
    /// BenchmarkDotNet's ShortRun job, in process: the generated child project of the default toolchain does not get
    /// TorchSharp's native libtorch (nor this repository's libLibTorchSharp patch step), so torch fails to load there.
    /// </summary>
    private sealed class InProcessShortRunConfig : ManualConfig
    {
        public InProcessShortRunConfig() => AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance));
    }

    private const int Resolution = 64;
    private const int Channels = 128;
    private Tensor _feats = null!;
    private Tensor _coords = null!;
    private SparseTensor _x = null!;
    private SparseConv3d _conv = null!;
    private Tensor _a = null!;
    private Tensor _b = null!;
    private Tensor _bias = null!;

    /// <summary>Active voxels.</summary>
    public long Voxels { get; private set; }

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(0);
        var rows = new List<long>();
        double c = (Resolution - 1) / 2.0, radius = 24.0, half = 1.4;
        for (int x = 0; x < Resolution; x++)
            for (int y = 0; y < Resolution; y++)
                for (int z = 0; z < Resolution; z++)
                {
                    double d = Math.Sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c));
                    if (Math.Abs(d - radius) <= half) rows.AddRange(new long[] { 0, x, y, z });
                }
        _coords = torch.tensor(rows.ToArray()).view(-1, 4).DetachFromDisposeScope();
        Voxels = _coords.shape[0];
        _feats = torch.randn(Voxels, Channels).DetachFromDisposeScope();
        _x = new SparseTensor(_feats, _coords, Resolution);
        _conv = new SparseConv3d(Channels, Channels, 3, true, ScalarType.Float32);
        _a = torch.randn(Voxels, 27 * Channels).DetachFromDisposeScope();
        _b = torch.randn(27 * Channels, Channels).DetachFromDisposeScope();
        _bias = torch.randn(Channels).DetachFromDisposeScope();
        using (torch.no_grad()) _conv.Forward(_x); // builds and caches the neighbour map
        Console.WriteLine($"// SparseConvBenchmarks: {Voxels} active voxels, torch threads {torch.get_num_threads()}");
    }

    /// <summary>The sparse conv with a cached neighbour map.</summary>
    [Benchmark]
    public long SubMConv()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return _conv.Forward(_x).Feats.shape[0];
    }

    /// <summary>The sparse conv including validation of fresh coordinates and the neighbour-map build.</summary>
    [Benchmark]
    public long SubMConvColdMap()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return _conv.Forward(new SparseTensor(_feats, _coords, Resolution)).Feats.shape[0];
    }

    /// <summary>A dense GEMM with the same FLOPs.</summary>
    [Benchmark(Baseline = true)]
    public long DenseGemm()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return torch.addmm(_bias, _a, _b, 1, 1).shape[0];
    }
}
