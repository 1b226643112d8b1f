using System.Diagnostics;
using System.Globalization;
using MdtDist.Trellis;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Benchmarks;

/// <summary>
/// One full-width transformer block of each TRELLIS-image-large flow, piece by piece, in float32 and bfloat16 (every
/// weight and activation in that dtype, as <c>TrellisCpu --dtype bfloat16</c> builds them): the layer norms, the adaLN
/// modulation, each GEMM, the QK RMS norms, self- and cross-attention, the MLP and the gated residuals, in CPU seconds
/// (user + sys of the process) and GFLOP per CPU-second, then the whole block as the model runs it. The pieces call the
/// library's own modules and helpers with the block's shapes. Run: <c>dotnet run -c Release --project
/// benchmarks/MdtDist.Benchmarks -- flow-block-profile [stage1|stage2] [float32,bfloat16] [threads] [radius]</c>.
/// Stage 1: 4096 tokens (16³), context [1, 1374, 1024]. Stage 2: the 32³ sites of a sphere shell of the 64³ grid
/// (radius 26, thickness 3: 4,168 sites; the released pipeline's ≈ 20 k voxels give ≈ 4–5 k), one sample.
/// </summary>
internal static class FlowBlockProfile
{
    private const long C = 1024, Heads = 16, Hidden = 4096, Ctx = 1374;

    private sealed record Piece(string Name, double Gflop, double Cpu, double Wall);

    public static void Run(string[] args)
    {
        string stage = args.Length > 0 ? args[0] : "stage1";
        var dtypes = (args.Length > 1 ? args[1] : "float32,bfloat16").Split(',').Select(s => CpuFeatures.ResolveComputeDType(s)).ToArray();
        torch.set_num_threads(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 1);
        double radius = args.Length > 3 ? double.Parse(args[3], CultureInfo.InvariantCulture) : 26;
        using var noGrad = torch.no_grad();
        var results = new List<(ScalarType, List<Piece>)>();
        foreach (var dt in dtypes)
        {
            var pieces = stage switch
            {
                "stage1" => Stage1(dt),
                "stage2" => Stage2(dt, radius),
                _ => throw new ArgumentException($"stage: expected stage1 or stage2, got '{stage}'."),
            };
            results.Add((dt, pieces));
        }
        Console.WriteLine();
        Console.WriteLine($"| piece | GFLOP | {string.Join(" | ", results.Select(r => $"{r.Item1} CPU s | {r.Item1} GFLOP/CPU-s"))} |");
        Console.WriteLine($"|---|---:|{string.Concat(results.Select(_ => "---:|---:|"))}");
        for (int i = 0; i < results[0].Item2.Count; i++)
        {
            var p0 = results[0].Item2[i];
            var cells = results.Select(r => r.Item2[i]).Select(p => $"{p.Cpu:F3} | {(p.Gflop > 0 ? (p.Gflop / p.Cpu).ToString("F1", CultureInfo.InvariantCulture) : "")}");
            Console.WriteLine($"| {p0.Name} | {(p0.Gflop > 0 ? p0.Gflop.ToString("F1", CultureInfo.InvariantCulture) : "")} | {string.Join(" | ", cells)} |");
        }
    }

    private static double CpuNow() => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;

    private static Tensor Time(List<Piece> log, string name, double gflop, Func<Tensor> f)
    {
        double c0 = CpuNow();
        var sw = Stopwatch.StartNew();
        var y = f();
        double wall = sw.Elapsed.TotalSeconds, cpu = CpuNow() - c0;
        log.Add(new Piece(name, gflop, cpu, wall));
        Console.WriteLine($"  {name,-48} {wall,7:F3} s wall {cpu,7:F3} s CPU{(gflop > 0 ? $"  {gflop,6:F1} GFLOP {gflop / cpu,6:F1} GFLOP/CPU-s" : "")}");
        return y;
    }

    private static T Random<T>(T m, long seed) where T : nn.Module => RandomTinyTrellis.Randomize(m, seed);

    private static List<Piece> Stage1(ScalarType dt)
    {
        const long L = 4096;
        var log = new List<Piece>();
        Console.WriteLine($"stage-1 block ({dt}, {torch.get_num_threads()} thread(s)): [1, {L}, {C}], context [1, {Ctx}, {C}], {Heads} heads");
        var g = new Generator(7);
        var x = torch.randn(new[] { 1, L, C }, generator: g).to(dt);
        var ctx = F.layer_norm(torch.randn(new[] { 1, Ctx, C }, generator: g), new[] { C }).to(dt);
        var temb = torch.randn(new[] { 1, C }, generator: g).to(dt);
        using var block = Random(new ModulatedTransformerCrossBlock(C, C, Heads, 4, false, true, false, true, dt, null), 11);
        block.eval();
        var ada = Random(nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(C, 6 * C, dtype: dt))), 12);
        var norm = new LayerNorm32(C, false, 1e-6, dt, null);
        var normAffine = Random(new LayerNorm32(C, true, 1e-6, dt, null), 13);
        var qkvL = Random(nn.Linear(C, 3 * C, dtype: dt), 14);
        var qL = Random(nn.Linear(C, C, dtype: dt), 15);
        var kvL = Random(nn.Linear(C, 2 * C, dtype: dt), 16);
        var outL = Random(nn.Linear(C, C, dtype: dt), 17);
        var rmsQ = Random(new MultiHeadRMSNorm(C / Heads, Heads, dt, null), 18);
        var rmsK = Random(new MultiHeadRMSNorm(C / Heads, Heads, dt, null), 19);
        var fc1 = Random(nn.Linear(C, Hidden, dtype: dt), 20);
        var fc2 = Random(nn.Linear(Hidden, C, dtype: dt), 21);
        var gelu = nn.GELU(GELU.Approximate.tanh);
        double Gemm(long m, long k, long n) => 2.0 * m * k * n / 1e9;
        double sdpaSelf = 4.0 * L * L * C / 1e9, sdpaCross = 4.0 * L * Ctx * C / 1e9;
        using (var warm = torch.NewDisposeScope()) block.forward(x, temb, ctx);   // first touch of the allocator's pages
        using (var scope = torch.NewDisposeScope())
        {
            var m = Time(log, "adaLN modulation (SiLU + 1024→6144)", Gemm(1, C, 6 * C), () => ada.forward(temb));
            var c = m.chunk(6, 1).Select(t => t.unsqueeze(1)).ToArray();
            var h = Time(log, "norm1 (LayerNorm32, no affine)", 0, () => norm.forward(x));
            h = Time(log, "modulate h·(1+scale)+shift", 0, () => AdaLn.Modulate(h, c[0], c[1]));
            var qkv = Time(log, "to_qkv GEMM", Gemm(L, C, 3 * C), () => qkvL.forward(h));
            var parts = qkv.reshape(1, L, 3, Heads, -1).unbind(2);
            var q = Time(log, "q_rms_norm", 0, () => rmsQ.forward(parts[0]));
            var k = Time(log, "k_rms_norm", 0, () => rmsK.forward(parts[1]));
            var a = Time(log, "self-attention SDPA (16 heads, 4096²)", sdpaSelf, () => DenseAttention.Compute(q, k, parts[2], AttentionBackend.Auto).reshape(1, L, -1));
            a = Time(log, "self to_out GEMM", Gemm(L, C, C), () => outL.forward(a));
            var x1 = Time(log, "gated residual x + h·gate", 0, () => AdaLn.GatedAdd(x, a, c[2]));
            h = Time(log, "norm2 (LayerNorm32, affine)", 0, () => normAffine.forward(x1));
            var cq = Time(log, "cross to_q GEMM", Gemm(L, C, C), () => qL.forward(h)).reshape(1, L, Heads, -1);
            var kv = Time(log, "cross to_kv GEMM (context; cached per condition)", Gemm(Ctx, C, 2 * C), () => kvL.forward(ctx)).reshape(1, Ctx, 2, Heads, -1).unbind(2);
            a = Time(log, "cross-attention SDPA (4096×1374)", sdpaCross, () => DenseAttention.Compute(cq, kv[0], kv[1], AttentionBackend.Auto).reshape(1, L, -1));
            a = Time(log, "cross to_out GEMM", Gemm(L, C, C), () => outL.forward(a));
            var x2 = Time(log, "residual x + h", 0, () => x1 + a);
            h = Time(log, "norm3 (LayerNorm32, no affine)", 0, () => norm.forward(x2));
            h = Time(log, "modulate", 0, () => AdaLn.Modulate(h, c[3], c[4]));
            h = Time(log, "MLP fc1 GEMM 1024→4096", Gemm(L, C, Hidden), () => fc1.forward(h));
            h = Time(log, "MLP GELU (tanh)", 0, () => gelu.forward(h));
            h = Time(log, "MLP fc2 GEMM 4096→1024", Gemm(L, Hidden, C), () => fc2.forward(h));
            Time(log, "gated residual", 0, () => AdaLn.GatedAdd(x2, h, c[5]));
        }
        double total = Gemm(1, C, 6 * C) + Gemm(L, C, 3 * C) + 3 * Gemm(L, C, C) + Gemm(Ctx, C, 2 * C) + 2 * Gemm(L, C, Hidden) + sdpaSelf + sdpaCross;
        log.Add(new Piece("sum of the pieces", total, log.Sum(p => p.Cpu), log.Sum(p => p.Wall)));
        Console.WriteLine($"  sum of the pieces {log[^1].Cpu:F3} CPU s");
        using (var scope = torch.NewDisposeScope())
        {
            Time(log, "whole block (context K/V cached)", total - Gemm(Ctx, C, 2 * C), () => block.forward(x, temb, ctx));
            Time(log, "whole block again", total - Gemm(Ctx, C, 2 * C), () => block.forward(x, temb, ctx));
        }
        foreach (var mod in new nn.Module[] { ada, norm, normAffine, qkvL, qL, kvL, outL, rmsQ, rmsK, fc1, fc2, gelu }) mod.Dispose();
        return log;
    }

    private static List<Piece> Stage2(ScalarType dt, double radius)
    {
        var log = new List<Piece>();
        var fine = new SparseCoordinates(StructureShapes.Shell(radius), 64);
        var coords = SparseSpatial.Downsample(fine, 2).Coarse;
        long n = coords.Count;
        Console.WriteLine($"stage-2 block ({dt}, {torch.get_num_threads()} thread(s)): {n} sites at 32³ (shell radius {radius}), context [1, {Ctx}, {C}], {Heads} heads");
        var g = new Generator(8);
        var xs = new SparseTensor(torch.randn(new[] { n, C }, generator: g).to(dt), coords);
        var x = xs.Feats;
        var ctx = F.layer_norm(torch.randn(new[] { 1, Ctx, C }, generator: g), new[] { C }).to(dt);
        var temb = torch.randn(new[] { 1, C }, generator: g).to(dt);
        using var block = Random(new ModulatedSparseTransformerCrossBlock(C, C, Heads, 4, SparseBlockAttention.Full, true, false, true, false, dt, null), 31);
        block.eval();
        var norm = new LayerNorm32(C, false, 1e-6, dt, null);
        var normAffine = Random(new LayerNorm32(C, true, 1e-6, dt, null), 33);
        var qkvL = Random(nn.Linear(C, 3 * C, dtype: dt), 34);
        var qL = Random(nn.Linear(C, C, dtype: dt), 35);
        var kvL = Random(nn.Linear(C, 2 * C, dtype: dt), 36);
        var outL = Random(nn.Linear(C, C, dtype: dt), 37);
        var rmsQ = Random(new MultiHeadRMSNorm(C / Heads, Heads, dt, null), 38);
        var rmsK = Random(new MultiHeadRMSNorm(C / Heads, Heads, dt, null), 39);
        var fc1 = Random(nn.Linear(C, Hidden, dtype: dt), 40);
        var fc2 = Random(nn.Linear(Hidden, C, dtype: dt), 41);
        var gelu = nn.GELU(GELU.Approximate.tanh);
        double Gemm(long m, long k, long nn_) => 2.0 * m * k * nn_ / 1e9;
        double sdpaSelf = 4.0 * n * n * C / 1e9, sdpaCross = 4.0 * n * Ctx * C / 1e9;
        var plan = AttentionPlan.Full(coords);
        using (var warm = torch.NewDisposeScope()) block.Forward(xs, temb, ctx);   // first touch of the allocator's pages
        using (var scope = torch.NewDisposeScope())
        {
            var m = Time(log, "adaLN modulation (SiLU + 1024→6144)", Gemm(1, C, 6 * C), () => block.adaLN_modulation!.forward(temb));
            var rows = Time(log, "modulation rows (PerRowOrShared)", 0, () => xs.PerRowOrShared(m));
            var c = rows.chunk(6, 1);
            var h = Time(log, "norm1 (LayerNorm32, no affine)", 0, () => norm.forward(x));
            h = Time(log, "modulate h·(1+scale)+shift", 0, () => AdaLn.Modulate(h, c[0], c[1]));
            var qkv = Time(log, "to_qkv GEMM", Gemm(n, C, 3 * C), () => qkvL.forward(h)).view(n, 3, Heads, -1);
            var q = Time(log, "q_rms_norm", 0, () => rmsQ.forward(qkv[.., 0]));
            var k = Time(log, "k_rms_norm", 0, () => rmsK.forward(qkv[.., 1]));
            var a = Time(log, $"self-attention (plan gather + SDPA {n}² + scatter)", sdpaSelf, () => SparseAttention.SelfAttention(q, k, qkv[.., 2], plan).reshape(n, C));
            a = Time(log, "self to_out GEMM", Gemm(n, C, C), () => outL.forward(a));
            var x1 = Time(log, "gated residual x + h·gate", 0, () => AdaLn.GatedAdd(x, a, c[2]));
            h = Time(log, "norm2 (LayerNorm32, affine)", 0, () => normAffine.forward(x1));
            var cq = Time(log, "cross to_q GEMM", Gemm(n, C, C), () => qL.forward(h)).view(n, Heads, -1);
            var kv = Time(log, "cross to_kv GEMM (context; cached per condition)", Gemm(Ctx, C, 2 * C), () => kvL.forward(ctx)).view(1, Ctx, 2, Heads, -1);
            a = Time(log, $"cross-attention SDPA ({n}×1374)", sdpaCross, () => SparseAttention.CrossAttention(cq, kv[.., .., 0], kv[.., .., 1], coords).reshape(n, C));
            a = Time(log, "cross to_out GEMM", Gemm(n, C, C), () => outL.forward(a));
            var x2 = Time(log, "residual x + h", 0, () => x1 + a);
            h = Time(log, "norm3 (LayerNorm32, no affine)", 0, () => norm.forward(x2));
            h = Time(log, "modulate", 0, () => AdaLn.Modulate(h, c[3], c[4]));
            h = Time(log, "MLP fc1 GEMM 1024→4096", Gemm(n, C, Hidden), () => fc1.forward(h));
            h = Time(log, "MLP GELU (tanh)", 0, () => gelu.forward(h));
            h = Time(log, "MLP fc2 GEMM 4096→1024", Gemm(n, Hidden, C), () => fc2.forward(h));
            Time(log, "gated residual", 0, () => AdaLn.GatedAdd(x2, h, c[5]));
        }
        double total = Gemm(1, C, 6 * C) + Gemm(n, C, 3 * C) + 3 * Gemm(n, C, C) + Gemm(Ctx, C, 2 * C) + 2 * Gemm(n, C, Hidden) + sdpaSelf + sdpaCross;
        log.Add(new Piece("sum of the pieces", total, log.Sum(p => p.Cpu), log.Sum(p => p.Wall)));
        Console.WriteLine($"  sum of the pieces {log[^1].Cpu:F3} CPU s");
        using (var scope = torch.NewDisposeScope())
        {
            Time(log, "whole block (context K/V cached)", total - Gemm(Ctx, C, 2 * C), () => block.Forward(xs, temb, ctx).Feats);
            Time(log, "whole block again", total - Gemm(Ctx, C, 2 * C), () => block.Forward(xs, temb, ctx).Feats);
        }
        foreach (var mod in new nn.Module[] { norm, normAffine, qkvL, qL, kvL, outL, rmsQ, rmsK, fc1, fc2, gelu }) mod.Dispose();
        return log;
    }
}

/// <summary>Ways to compute the stage-1 self-attention (16 heads, 4096 tokens, head dim 64) in one dtype: speed and error
/// against a float64 reference. Run: <c>... -- sdpa-variants [float32|bfloat16] [threads] [tokens]</c>.</summary>
internal static class SdpaVariants
{
    public static void Run(string[] args)
    {
        var dt = CpuFeatures.ResolveComputeDType(args.Length > 0 ? args[0] : "bfloat16");
        torch.set_num_threads(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1);
        long l = args.Length > 2 ? long.Parse(args[2], CultureInfo.InvariantCulture) : 4096, lk = args.Length > 3 ? long.Parse(args[3], CultureInfo.InvariantCulture) : l;
        using var noGrad = torch.no_grad();
        var g = new Generator(3);
        // q, k as after the RMS norm (unit rows × 8 = √64): scores of order ±8
        var q64 = F.normalize(torch.randn(new[] { 1L, l, 16, 64 }, ScalarType.Float64, generator: g), dim: -1) * 8;
        var k64 = F.normalize(torch.randn(new[] { 1L, lk, 16, 64 }, ScalarType.Float64, generator: g), dim: -1) * 8;
        var v64 = torch.randn(new[] { 1L, lk, 16, 64 }, ScalarType.Float64, generator: g);
        var reference = DenseAttention.Compute(q64, k64, v64, AttentionBackend.Math);
        var q = q64.to(dt); var k = k64.to(dt); var v = v64.to(dt);
        double flop = 4.0 * l * lk * 1024 / 1e9;
        Tensor? first = null;
        void T(string name, Func<Tensor> f)
        {
            using var scope = torch.NewDisposeScope();
            var warm = f();
            bool same = first is null || (warm == first).all().item<bool>();
            first ??= warm.DetachFromDisposeScope();
            double c0 = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
            var y = f();
            double c = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - c0;
            double err = ((y.to(ScalarType.Float64) - reference).norm() / reference.norm()).item<double>();
            Console.WriteLine($"  {name,-60} {c,7:F3} CPU s {flop / c,6:F1} GFLOP/CPU-s  rel. error {err:E2}{(same ? "" : "  (differs from the first)")}");
        }
        Console.WriteLine($"attention {dt}, {torch.get_num_threads()} thread(s), [1, {l}, 16, 64] x [1, {lk}, 16, 64], {flop:F1} GFLOP");
        T("SDPA on the permuted views [B, L, H, D] → [B, H, L, D]", () =>
            F.scaled_dot_product_attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3));
        T("DenseAttention.Compute (head-major copies for bf16/f16)", () => DenseAttention.Compute(q, k, v, AttentionBackend.Auto));
        T("SDPA on contiguous [B, H, L, D]", () =>
        {
            var qh = q.permute(0, 2, 1, 3).contiguous(); var kh = k.permute(0, 2, 1, 3).contiguous(); var vh = v.permute(0, 2, 1, 3).contiguous();
            return F.scaled_dot_product_attention(qh, kh, vh).permute(0, 2, 1, 3);
        });
        T("SDPA in float32 (cast in and out)", () => DenseAttention.Compute(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32), AttentionBackend.Auto).to(dt));
        foreach (long chunk in new long[] { 512, 1024 })
        {
            T($"explicit, {chunk}-query chunks: bmm, softmax(float32), bmm", () =>
            {
                var qh = (q.permute(0, 2, 1, 3) * (1.0 / 8)).contiguous(); var kt = k.permute(0, 2, 3, 1).contiguous(); var vh = v.permute(0, 2, 1, 3).contiguous();
                var outs = new List<Tensor>();
                for (long a = 0; a < l; a += chunk)
                {
                    using var s2 = torch.NewDisposeScope();
                    var s = qh.narrow(2, a, Math.Min(chunk, l - a)).matmul(kt);
                    var p = s.softmax(-1, ScalarType.Float32).to(dt);
                    outs.Add(p.matmul(vh).MoveToOuterDisposeScope());
                }
                return torch.cat(outs, 2).permute(0, 2, 1, 3);
            });
        }
    }
}

/// <summary>
/// Whole flows at full width with few blocks: TRELLIS-image-large's stage-1 flow (16³ latent) and stage-2 flow (a
/// 22,720-voxel shell of the 64³ grid, with its IO blocks) built in float32 with seeded weights, then converted to
/// bfloat16 (the same weights, rounded), each run on the same inputs, two calls each (the figure is the smaller CPU time;
/// the context K/V is cached after the first call). The before/after columns of docs/trellis-cpu-bf16.md were measured
/// with switches for the old paths that have since been removed (the new paths are the only ones). Prints the 2048³ GEMM rates as the yardstick, CPU seconds, the bfloat16 / float32 ratios and
/// the relative 2-norm error of bfloat16 against float32. Run: <c>... -- flow-speed [stage1,stage2] [blocks,...] [threads]</c>.
/// </summary>
internal static class FlowSpeed
{
    public static void Run(string[] args)
    {
        var stages = (args.Length > 0 ? args[0] : "stage1,stage2").Split(',');
        var blockCounts = (args.Length > 1 ? args[1] : "1,4").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        torch.set_num_threads(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 1);
        using var noGrad = torch.no_grad();
        var g = new Generator(21);
        var cond = F.layer_norm(torch.randn(new long[] { 1, 1374, 1024 }, generator: g), new long[] { 1024 });
        var t = torch.full(new long[] { 1 }, 1000.0);
        var noise1 = torch.randn(new long[] { 1, 8, 16, 16, 16 }, generator: g);
        var coords = StructureShapes.Shell(26);
        var noise2 = torch.randn(new[] { coords.shape[0], 8L }, generator: g);
        foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var a = torch.randn(new long[] { 2048, 2048 }, generator: g).to(dt);
            var b = torch.randn(new long[] { 2048, 2048 }, generator: g).to(dt);
            double best = double.MaxValue;
            for (int rep = 0; rep < 3; rep++)
            {
                double c0 = Cpu();
                a.matmul(b).Dispose();
                best = Math.Min(best, Cpu() - c0);
            }
            Console.WriteLine($"GEMM 2048³ {dt}: {2.0 * 2048 * 2048 * 2048 / 1e9 / best:F1} GFLOP per CPU-second (best of 3)");
        }
        Console.WriteLine("| flow | blocks | float32 CPU s | bf16 CPU s | bf16/f32 | bf16 error vs f32 | float32: block GFLOP per CPU-s |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var stage in stages)
            foreach (int blocks in blockCounts)
            {
                nn.Module module;
                Func<ScalarType, Tensor> forward;
                double blockGflop;
                if (stage == "stage1")
                {
                    var m = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SparseStructureFlowModel(MdtDist.Trellis.Models.SparseStructureFlowConfig.ImageLarge with { NumBlocks = blocks }), 1);
                    module = m;
                    forward = dt => m.forward(noise1.to(dt), t.to(dt), cond.to(dt)).to(ScalarType.Float32);
                    blockGflop = BlockGflop(4096);
                }
                else
                {
                    var m = RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SLatFlowModel(MdtDist.Trellis.Models.SLatFlowConfig.ImageLarge with { NumBlocks = blocks }), 1);
                    module = m;
                    forward = dt => m.forward(new SparseTensor(noise2.to(dt), coords, 64), t.to(dt), cond.to(dt)).Feats.to(ScalarType.Float32);
                    blockGflop = BlockGflop(SparseSpatial.Downsample(new SparseCoordinates(coords, 64), 2).Coarse.Count);
                }
                module.eval();
                var cpu = new double[2];                 // float32, bfloat16
                var y = new Tensor[2];
                for (int d = 0; d < 2; d++)
                {
                    var dt = d == 0 ? ScalarType.Float32 : ScalarType.BFloat16;
                    if (d == 1) module.to(ScalarType.BFloat16);
                    cpu[d] = double.MaxValue;
                    for (int call = 0; call < 2; call++)
                    {
                        double c0 = Cpu();
                        var yi = forward(dt);
                        cpu[d] = Math.Min(cpu[d], Cpu() - c0);
                        y[d]?.Dispose();
                        y[d] = yi;
                    }
                }
                double err = ((y[1].to(ScalarType.Float64) - y[0].to(ScalarType.Float64)).norm() / y[0].to(ScalarType.Float64).norm()).item<double>();
                Console.WriteLine($"| {stage} | {blocks} | {cpu[0]:F2} | {cpu[1]:F2} | {cpu[0] / cpu[1]:F2}× | {err:E2} | {blocks * blockGflop / cpu[0]:F1} |");
                Console.Out.Flush();
                module.Dispose();
                foreach (var yi in y) yi.Dispose();
            }
    }

    private static double Cpu() => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;

    /// <summary>GFLOP of one modulated cross block over <paramref name="l"/> tokens (GEMMs and attention, context K/V cached).</summary>
    private static double BlockGflop(long l) => (2.0 * l * 1024 * (3 * 1024 + 3 * 1024 + 2 * 4096) + 4.0 * l * l * 1024 + 4.0 * l * 1374 * 1024) / 1e9;
}
