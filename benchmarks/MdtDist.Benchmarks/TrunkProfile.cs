using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// The structured-latent decoders' transformer trunk (TRELLIS-image-large: width 768, 12 heads, swin window 8, shifted
/// every other block) on a sphere shell of the 64³ grid, piece by piece: layer norms, qkv GEMM, window partition, the
/// attention kernel, un-partition, output projection, MLP, the absolute position embedding and the casts, in CPU seconds
/// and GFLOP per CPU-second. With <c>--decoder</c> it instead times the whole 12-block Gaussian decoder forward and its
/// peak resident memory. Run: <c>dotnet run -c Release --project benchmarks/MdtDist.Benchmarks -- trunk-profile
/// [float32|bfloat16] [radius] [threads] [blocks] [--decoder] [--quantum Q]</c> (Q: windows grouped by length rounded up to a multiple of Q; 0: power-of-two buckets).
/// </summary>
internal static class TrunkProfile
{
    private const long C = 768, Heads = 12;
    private const int Window = 8;

    public static void Run(string[] args)
    {
        bool decoder = args.Contains("--decoder");
        int qi = Array.IndexOf(args, "--quantum");
        if (qi >= 0)
        {
            AttentionPlan.WindowLengthQuantum = long.Parse(args[qi + 1], CultureInfo.InvariantCulture);
            args = args.Take(qi).Concat(args.Skip(qi + 2)).ToArray();
        }
        bool irregular = args.Contains("--irregular");
        args = args.Where(a => a != "--decoder" && a != "--irregular").ToArray();
        var dtype = args.Length > 0 ? CpuFeatures.ResolveComputeDType(args[0]) : ScalarType.BFloat16;
        double radius = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 24.55;
        if (args.Length > 2) torch.set_num_threads(int.Parse(args[2], CultureInfo.InvariantCulture));
        int nBlocks = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 2;
        using var noGrad = torch.no_grad();
        var coords = irregular ? StructureShapes.Shell(radius, centre: (30.3, 32.9, 31.1), semiAxes: (1.08, 0.93, 1.0)) : StructureShapes.Shell(radius);
        long n = coords.shape[0];
        if (decoder)
        {
            Decoder(dtype, coords, radius);
            return;
        }
        Console.WriteLine($"decoder trunk, {dtype}, {torch.get_num_threads()} threads, {nBlocks} blocks of width {C}, {Heads} heads, window {Window}, {(irregular ? "irregular (ellipsoid, off-centre) " : "")}shell of {n} voxels (radius {radius}), windows grouped by length {(AttentionPlan.WindowLengthQuantum > 0 ? $"rounded up to a multiple of {AttentionPlan.WindowLengthQuantum}" : "in power-of-two buckets")}");
        var blocks = Enumerable.Range(0, nBlocks).Select(i => RandomTinyTrellis.Randomize(new SparseTransformerBlock(C, Heads, 4,
            SparseBlockAttention.ForBlock("swin", Window, i), false, true, false, dtype, null), 10 + i)).ToArray();
        var inputLayer = RandomTinyTrellis.Randomize(nn.Linear(8, C, true, null, dtype), 3);
        var g = new Generator(5);
        var latent = torch.randn(new[] { n, 8L }, generator: g).to(dtype);
        for (int pass = 1; pass <= 2; pass++)
        {
            using var scope = torch.NewDisposeScope();
            var sites = new SparseCoordinates(coords.clone(), 64);
            Console.WriteLine($"pass {pass} ({(pass == 1 ? "cold: window partitions built here" : "warm: partitions cached")})");
            var acc = new Dictionary<string, (double Cpu, double Wall, double Gflop)>();
            void T(string what, double gflop, Action a)
            {
                var (c, s) = Measure(a);
                acc[what] = acc.TryGetValue(what, out var p) ? (p.Cpu + c, p.Wall + s, p.Gflop + gflop) : (c, s, gflop);
            }
            Tensor h = null!, ape = null!;
            T("input layer (8→768)", 2.0 * n * 8 * C / 1e9, () => h = inputLayer.forward(latent));
            T("absolute position embedding", 0, () => ape = SparseEmbeddings.AbsolutePosition(sites.Coords64[.., 1..], C, dtype));
            T("add embedding", 0, () => h = h + ape);
            var x = new SparseTensor(h, sites);
            var blockTotal = 0.0;
            foreach (var block in blocks)
            {
                var cpu0 = Cpu();
                var attn = block.attn;
                Tensor f = x.Feats, a = null!, qkv = null!, o = null!;
                T("norm1 (LayerNorm32)", 0, () => a = block.norm1.forward(f));
                T("qkv GEMM (768→2304)", 2.0 * n * C * 3 * C / 1e9, () => qkv = attn.to_qkv!.forward(a));
                AttentionPlan plan = null!;
                T("window partition plan (cached per coords and shift)", 0, () => plan = AttentionPlan.Windowed(sites, attn.WindowSize, attn.ShiftWindow));
                if (pass == 1)
                    Console.WriteLine($"  shift {attn.ShiftWindow}: {plan.SequenceLengths.Length} windows, {plan.SequenceLengths.Distinct().Count()} distinct lengths ({plan.SequenceLengths.Min()} … {plan.SequenceLengths.Max()}), {plan.Chunks.Count} chunks");
                SwinPieces(plan, qkv, n, T, out o);
                T("output projection (768→768)", 2.0 * n * C * C / 1e9, () => o = attn.to_out.forward(o));
                T("residual adds", 0, () => f = f + o);
                // FeedForwardNet.AddForward without autograd: row chunks, GELU and residual add in place
                var lin = block.mlp.Linears().ToArray();
                long rows = Math.Max(1, FeedForwardNet.RowChunkElements / (4 * C));
                for (long r = 0; r < n; r += rows)
                {
                    using var chunkScope = torch.NewDisposeScope();
                    var fr = f.narrow(0, r, Math.Min(rows, n - r));
                    long m = fr.shape[0];
                    T("norm2 (LayerNorm32)", 0, () => a = block.norm2.forward(fr));
                    T("MLP fc1 (768→3072)", 2.0 * m * C * 4 * C / 1e9, () => a = lin[0].forward(a));
                    T("MLP GELU (tanh, in place)", 0, () => a = a.gelu_(GELU.Approximate.tanh));
                    T("MLP fc2 (3072→768)", 2.0 * m * C * 4 * C / 1e9, () => a = lin[1].forward(a));
                    T("residual adds", 0, () => fr.add_(a));
                }
                x = x.ReplaceFeats(f);
                blockTotal += Cpu() - cpu0;
            }
            double sum = 0, gsum = 0;
            foreach (var (k, v) in acc)
            {
                Console.WriteLine($"  {k,-58} {v.Wall,7:F3} s wall {v.Cpu,7:F3} s CPU{(v.Gflop > 0 ? $"  {v.Gflop,7:F1} GFLOP  {v.Gflop / v.Cpu,6:F1} GFLOP per CPU-s" : "")}");
                sum += v.Cpu;
                gsum += v.Gflop;
            }
            Console.WriteLine($"  {"sum of pieces",-58} {"",7} {"",7} {sum,7:F3} s CPU  {gsum,7:F1} GFLOP  {gsum / sum,6:F1} GFLOP per CPU-s");
            var xin = new SparseTensor(h, sites);
            var (bc, bs) = Measure(() => { foreach (var b in blocks) xin = Precision.Scoped(() => b.Forward(xin)); });
            Console.WriteLine($"  {"the same blocks through SparseTransformerBlock.Forward",-58} {bs,7:F3} s wall {bc,7:F3} s CPU");
        }
        // accuracy of the trunk in this dtype against float32 (same weights, rounded)
        if (dtype != ScalarType.Float32)
        {
            using var scope = torch.NewDisposeScope();
            var sites = new SparseCoordinates(coords.clone(), 64);
            var x = new SparseTensor(torch.randn(new[] { n, C }, generator: new Generator(7)), sites);
            var y32 = x;
            foreach (var b in blocks)
            {
                using var b32 = RandomTinyTrellis.Randomize(new SparseTransformerBlock(C, Heads, 4, new SparseBlockAttention(b.attn.Mode, b.attn.WindowSize, b.attn.ShiftWindow),
                    false, true, false, ScalarType.Float32, null), 0);
                foreach (var ((_, p32), (_, p)) in b32.named_parameters().Zip(b.named_parameters())) p32.copy_(p.to(ScalarType.Float32));
                y32 = Precision.Scoped(() => b32.Forward(y32));
            }
            var y = x.ReplaceFeats(x.Feats.to(dtype));
            foreach (var b in blocks) y = Precision.Scoped(() => b.Forward(y));
            double err = (y.Feats.to(ScalarType.Float32) - y32.Feats).abs().max().item<float>() / y32.Feats.abs().max().item<float>();
            double rms = (y.Feats.to(ScalarType.Float32) - y32.Feats).pow(2).mean().sqrt().item<float>() / y32.Feats.pow(2).mean().sqrt().item<float>();
            Console.WriteLine($"  {dtype} vs float32 (same weights), {blocks.Length} blocks: max|diff|/max|ref| {err:E3}, rms diff / rms ref {rms:E3}");
        }
    }

    /// <summary>The windowed attention between the qkv GEMM and the output projection, piece by piece (the steps of
    /// <see cref="SparseAttention.SelfAttention(Tensor, AttentionPlan)"/>).</summary>
    private static void SwinPieces(AttentionPlan plan, Tensor qkvFlat, long n, Action<string, double, Action> T, out Tensor o)
    {
        long hd = C / Heads;
        var qkv = qkvFlat.view(n, 3, Heads, hd);
        double padded = plan.Chunks.Sum(c => (double)c.S * c.L * c.L), real = plan.SequenceLengths.Sum(l => (double)l * l);
        Tensor result = null!;
        T("un-partition (drop padding, scatter to rows)", 0, () => result = torch.empty(new[] { n, Heads, hd }, dtype: qkv.dtype));
        foreach (var c in plan.Chunks)
        {
            Tensor g = null!, oi = null!;
            T("partition (gather packed qkv into windows)", 0, () => g = qkv.index_select(0, c.Rows.view(-1)).view(c.S, c.L, 3, Heads, hd));
            T($"attention kernel (SDPA; {real / padded * 100:F0} % of padded scores real, {plan.Chunks.Count} chunks)", 4.0 * c.S * c.L * c.L * C / 1e9,
                () => oi = SparseAttention.Attend(g.select(2, 0), g.select(2, 1), g.select(2, 2), c.KeyValid).reshape(c.S * c.L, Heads, hd));
            T("un-partition (drop padding, scatter to rows)", 0, () =>
            {
                if (c.ValidFlat is not null) oi = oi.index_select(0, c.ValidFlat);
                result.index_copy_(0, c.OutRows, oi);
            });
        }
        o = result.view(n, C);
    }

    /// <summary>The whole Gaussian decoder (12 blocks) forward: CPU and wall seconds and peak resident memory.</summary>
    private static void Decoder(ScalarType dtype, Tensor coords, double radius)
    {
        var config = SLatGaussianDecoderConfig.FromArgs(JsonNode.Parse("""
            {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4,
             "attn_mode": "swin", "window_size": 8, "use_fp16": true,
             "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
               "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
               "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}}
            """)!.AsObject());
        long n = coords.shape[0];
        Console.WriteLine($"Gaussian decoder (12 blocks, 768 wide), {dtype}, {torch.get_num_threads()} threads, shell of {n} voxels (radius {radius})");
        var (bc, bs) = Measure(() => { });
        SLatGaussianDecoder dec = null!;
        (bc, bs) = Measure(() => dec = RandomTinyTrellis.Randomize(new SLatGaussianDecoder(config, dtype), 4));
        dec.eval();
        Console.WriteLine($"  build + random weights {bs:F1} s wall {bc:F1} s CPU; resident {Rss() / 1e9:F2} GB");
        var latent = torch.randn(new[] { n, 8L }, generator: new Generator(5)).to(dtype);
        for (int rep = 1; rep <= 2; rep++)
        {
            var x = new SparseTensor(latent, new SparseCoordinates(coords.clone(), 64));
            ResetPeak();
            long before = Rss();
            IReadOnlyList<MdtDist.Trellis.Representations.Gaussians> gs = null!;
            SparseTensor h = null!;
            using var scope = torch.NewDisposeScope();
            var (c, s) = Measure(() => h = dec.ForwardFeatures(x));
            var (c2, s2) = Measure(() => gs = dec.ToRepresentation(h));
            Console.WriteLine($"  forward {rep} (new coordinates: partitions built inside): {s + s2,7:F2} s wall {c + c2,7:F2} s CPU " +
                $"(network {c:F2}, to_representation {c2:F2} CPU s); resident {before / 1e9:F2} GB before, peak {Peak() / 1e9:F2} GB; {gs.Sum(x => x.Count)} Gaussians");
            foreach (var x1 in gs) x1.Dispose();
        }
    }

    private static (double Cpu, double Wall) Measure(Action a)
    {
        var cpu0 = Cpu();
        var sw = Stopwatch.StartNew();
        a();
        return (Cpu() - cpu0, sw.Elapsed.TotalSeconds);
    }

    private static double Cpu() => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;

    private static readonly MdtDist.Core.Training.ProcessPeakMemory PeakMeter = new();

    private static void ResetPeak() => PeakMeter.ResetPeak();

    private static long Rss() => MdtDist.Core.Training.ProcessPeakMemory.ResidentBytes;

    private static long Peak() => PeakMeter.PeakBytes;
}
