using System.Diagnostics;
using System.Globalization;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Where stage 2's time outside the transformer goes: the IO residual blocks of TRELLIS-image-large's structured-latent
/// flow (io_block_channels [128], 2 per side, model_channels 1024) on a sphere shell of the 64³ grid, timed piece by
/// piece with a Stopwatch (CPU ops are synchronous). Run: <c>dotnet run -c Release --project benchmarks/MdtDist.Benchmarks
/// -- stage2-profile [float32|bfloat16] [voxels≈] [threads]</c>.
/// </summary>
internal static class Stage2Profile
{
    public static void Run(string[] args)
    {
        var dtype = args.Length > 0 ? CpuFeatures.ResolveComputeDType(args[0]) : ScalarType.Float32;
        double radius = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 26;
        if (args.Length > 2) torch.set_num_threads(int.Parse(args[2], CultureInfo.InvariantCulture));
        using var noGrad = torch.no_grad();
        var coords = StructureShapes.Shell(radius);
        long n = coords.shape[0];
        Console.WriteLine($"stage-2 IO blocks, {dtype}, {torch.get_num_threads()} threads, shell of {n} voxels (radius {radius}, thickness 3)");
        const long C = 1024, io = 128;
        var b0 = RandomTinyTrellis.Randomize(new SparseResBlock3d(io, C, io, false, false, dtype, null), 1);
        var b1 = RandomTinyTrellis.Randomize(new SparseResBlock3d(io, C, C, true, false, dtype, null), 2);
        var o0 = RandomTinyTrellis.Randomize(new SparseResBlock3d(2 * C, C, io, false, true, dtype, null), 3);
        var o1 = RandomTinyTrellis.Randomize(new SparseResBlock3d(2 * io, C, io, false, false, dtype, null), 4);
        var g = new Generator(5);
        var temb = torch.randn(new long[] { 1, C }, generator: g).to(dtype);
        for (int rep = 0; rep < 2; rep++)
        {
            SparseConv3d.PerOffsetEnabled = SparseConv3d.FuseUpsample = rep == 0;
            using var scope = torch.NewDisposeScope();
            var total = Stopwatch.StartNew();
            var sites = new SparseCoordinates(coords.clone(), 64);
            var x = new SparseTensor(torch.randn(new[] { n, io }, generator: g).to(dtype), sites);
            double T(string what, double gflop, Action a)
            {
                var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                a();
                double s = sw.Elapsed.TotalSeconds, c = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
                // under load the wall time mostly measures other processes: CPU seconds (user + sys) are printed beside it
                Console.WriteLine($"  {what,-62} {s,8:F2} s wall {c,8:F2} s CPU{(gflop > 0 ? $"  {gflop,7:F1} GFLOP  {gflop / c,6:F1} GFLOP per CPU-s" : "")}");
                return s;
            }
            Console.WriteLine($"pass {rep + 1} ({(SparseConv3d.PerOffsetEnabled ? "after: per-offset GEMM for wide convs, fused upsample-conv" : "im2col chunks everywhere (before)")})");
            T("neighbour map 3³ at 64³", 0, () => SparseNeighbours.Map(sites, 3));
            SparseTensor h0 = null!, h1 = null!, u0 = null!, u1 = null!;
            double Conv(long rows, long cin, long cout) => 2.0 * rows * 27 * cin * cout / 1e9;
            T("input block 0 (128→128, 64³)", 2 * Conv(n, io, io), () => h0 = b0.Forward(x, temb));
            var coarse = SparseSpatial.Downsample(sites, 2);
            long m = coarse.Coarse.Count;
            T($"neighbour map 3³ at 32³ ({m} sites)", 0, () => SparseNeighbours.Map(coarse.Coarse, 3));
            T("input block 1 (128→1024, down to 32³)", Conv(m, io, C) + Conv(m, C, C) + 2.0 * m * io * C / 1e9, () => h1 = b1.Forward(h0, temb));
            T("  of which conv2 1024→1024 at 32³", Conv(m, C, C), () => b1.conv2.Apply(h1.Feats, h1.Coordinates));
            var cat = h1.ReplaceFeats(torch.cat(new[] { h1.Feats, h1.Feats }, 1));
            T("output block 0 (2048→128, up to 64³)", Conv(n, 2 * C, io) + Conv(n, io, io) + 2.0 * n * 2 * C * io / 1e9, () => u0 = o0.Forward(cat, temb));
            var up = SparseSpatial.Upsample(cat, 2);
            if (SparseConv3d.FuseUpsample)
                T("  of which conv1 2048→128 of the copies (fused, coarse GEMM)", Conv(m, 2 * C, io), () => o0.conv1.ApplyUpsampled(cat.Feats, SparseSpatial.UpsampleMap(cat.Coordinates, 2)));
            else
                T("  of which conv1 2048→128 at 64³", Conv(n, 2 * C, io), () => o0.conv1.Apply(up.Feats, up.Coordinates));
            var cat2 = u0.ReplaceFeats(torch.cat(new[] { u0.Feats, h0.Feats }, 1));
            T("output block 1 (256→128, 64³)", Conv(n, 2 * io, io) + Conv(n, io, io) + 2.0 * n * 2 * io * io / 1e9, () => u1 = o1.Forward(cat2, temb));
            T("absolute position embedding (1024 ch, 32³ sites)", 0, () => SparseEmbeddings.AbsolutePosition(h1.Coordinates.Coords64[.., 1..], C, dtype));
            Console.WriteLine($"  total {total.Elapsed.TotalSeconds:F3} s");
        }
    }
}
