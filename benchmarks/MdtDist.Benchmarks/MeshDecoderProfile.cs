using System.Diagnostics;
using System.Globalization;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Where the mesh decoder's time and memory go after its transformer: the two subdivision blocks of TRELLIS-image-large's
/// <c>slat_dec_mesh_swin8_B_64l8m256c_fp16</c> (768 → 192 at 128³, 192 → 96 at 256³), its output layer and the FlexiCubes
/// inputs, on a sphere shell of the 64³ grid, piece by piece: wall and CPU seconds and the peak resident memory of each piece
/// (the kernel's high-water mark is reset before each through <c>/proc/self/clear_refs</c>). Run:
/// <c>dotnet run -c Release --project benchmarks/MdtDist.Benchmarks -- mesh-profile [float32|bfloat16] [radius] [threads]
/// [--pieces: only block 1 piece by piece] [--full [--1block]: the whole released decoder forward instead]</c>.
/// </summary>
internal static class MeshDecoderProfile
{
    public static void Run(string[] args)
    {
        var dtype = args.Length > 0 ? CpuFeatures.ResolveComputeDType(args[0]) : ScalarType.Float32;
        double radius = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 24.55;
        if (args.Length > 2) torch.set_num_threads(int.Parse(args[2], CultureInfo.InvariantCulture));
        using var noGrad = torch.no_grad();
        var coords = StructureShapes.Shell(radius);
        long n = coords.shape[0];
        Console.WriteLine($"mesh decoder after the transformer, {dtype}, {torch.get_num_threads()} threads, shell of {n} voxels (radius {radius})");
        const long C = 768;
        if (args.Contains("--full"))
        {
            // the whole released decoder (12 swin blocks) on a random latent, as the pipeline runs it
            int blocks = args.Contains("--1block") ? 1 : 12;
            var full = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SLatMeshDecoder(
                MdtDist.Trellis.Models.SLatMeshDecoderConfig.Released with { NumBlocks = blocks }, dtype), 6);
            full.eval();
            var lat = new SparseTensor(torch.randn(new[] { n, 8L }, generator: new Generator(7)).to(dtype), new SparseCoordinates(coords, 64));
            for (int rep = 0; rep < 2; rep++)
            {
                IReadOnlyList<FlexiCubesInputs> fi = null!;
                T($"mesh decoder forward, {blocks} blocks (run {rep + 1})", () => fi = full.forward(lat));
                foreach (var x0 in fi) x0.Dispose();
            }
            return;
        }
        var sb0 = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SparseSubdivideBlock3d(C, 64, C / 4, 32, dtype, null), 1);
        var sb1 = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SparseSubdivideBlock3d(C / 4, 128, C / 8, 32, dtype, null), 2);
        var outLayer = RandomTinyTrellis.Randomize(nn.Linear(C / 8, FlexiCubesInputs.ChannelsWithColor, true, null, dtype), 3);
        var g = new Generator(5);
        using var scope = torch.NewDisposeScope();
        var sites = new SparseCoordinates(coords, 64);
        var x = new SparseTensor(torch.randn(new[] { n, C }, generator: g).to(dtype), sites);
        Console.WriteLine($"  resident before: {Rss() / 1e9:F2} GB");
        SparseTensor h0 = null!, h1 = null!, f = null!;
        IReadOnlyList<FlexiCubesInputs> inputs = null!;
        T("subdivide block 0 (768→192, 64³→128³)", () => h0 = sb0.Forward(x));
        T("subdivide block 1 (192→96, 128³→256³)", () => h1 = sb1.Forward(h0));
        if (!args.Contains("--pieces"))
        {
        T("out layer (96→101)", () => f = new SparseTensor(outLayer.forward(h1.Feats), h1.Coordinates));
        var dec = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SLatMeshDecoder(
            MdtDist.Trellis.Models.SLatMeshDecoderConfig.Released with { ModelChannels = 256, NumHeads = 4, NumBlocks = 1 }, dtype), 4);
        T("FlexiCubes inputs (to_representation)", () => inputs = dec.ToRepresentation(f));
        T("FlexiCubes extraction", () => { using var r = FlexiCubes.Extract(inputs[0]); Console.WriteLine($"    {r.Vertices.shape[0]} vertices, {r.Faces.shape[0]} faces"); });
        }
        Console.WriteLine($"  rows: {n} → {h0.Feats.shape[0]} → {h1.Feats.shape[0]}");
        f = h1 = null!;
        inputs = null!;
        Console.WriteLine("subdivide block 1, piece by piece (the same operations as SparseSubdivideBlock3d.Forward):");
        const long ci = C / 4, co = C / 8;
        var gn1 = RandomTinyTrellis.Randomize(new SparseGroupNorm32(32, ci, 1e-5, true, dtype, null), 11);
        var conv1 = RandomTinyTrellis.Randomize(new SparseConv3d(ci, co, 3, true, dtype, null), 12);
        var gn2 = RandomTinyTrellis.Randomize(new SparseGroupNorm32(32, co, 1e-5, true, dtype, null), 13);
        var conv2 = RandomTinyTrellis.Randomize(new SparseConv3d(co, co, 3, true, dtype, null), 14);
        var skip = RandomTinyTrellis.Randomize(new SparseConv3d(ci, co, 1, true, dtype, null), 15);
        var fineSites = SparseSpatial.SubdivideSites(h0.Coordinates);
        long m = h0.Feats.shape[0];
        var pa = nn.functional.silu(gn1.Forward(h0).Feats);
        var gg = torch.randn(new[] { fineSites.Count, co }, generator: g).to(dtype);
        var parentRow = torch.arange(fineSites.Count, dtype: ScalarType.Int64).div(8, RoundingMode.floor);
        for (int pass = 0; pass < 2; pass++)
        {
            Console.WriteLine($" pass {pass + 1}");
            T("neighbour map 3³ of the 256³ fine sites", () => SparseNeighbours.Map(new SparseCoordinates(fineSites.Coords, 256), 3).Dispose());
            var fineCopy = new SparseCoordinates(fineSites.Coords, 256);
            SparseNeighbours.Map(fineCopy, 3);
            T("conv1 192→96 of the copies (parent GEMM + gather-sum)", () => Precision.Scoped(() => conv1.ApplyCopied(pa, parentRow, fineCopy)).Dispose());
            T("conv2 96→96 at 256³ (im2col chunks)", () => Precision.Scoped(() => conv2.Apply(gg, fineCopy)).Dispose());
            T("group norm 2 + SiLU (96 ch, 256³ rows)", () => Precision.Scoped(() => nn.functional.silu(gn2.Forward(new SparseTensor(gg, fineSites)).Feats)).Dispose());
        }
    }

    private static void T(string what, Action a)
    {
        ResetPeak();
        long before = Rss();
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        a();
        double s = sw.Elapsed.TotalSeconds, c = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        Console.WriteLine($"  {what,-44} {s,7:F2} s wall {c,7:F2} s CPU   resident {before / 1e9:F2} → {Rss() / 1e9:F2} GB, peak {Peak() / 1e9:F2} GB");
    }

    private static readonly MdtDist.Core.Training.ProcessPeakMemory PeakMeter = new();

    private static void ResetPeak() => PeakMeter.ResetPeak();

    private static long Rss() => MdtDist.Core.Training.ProcessPeakMemory.ResidentBytes;

    private static long Peak() => PeakMeter.PeakBytes;
}
