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
            Time(log, "whole block, first call (computes the context K/V)", total, () => block.forward(x, temb, ctx));
            Time(log, "whole block, second call (K/V cached)", total - Gemm(Ctx, C, 2 * C), () => block.forward(x, temb, ctx));
        }
        foreach (var mod in new nn.Module[] { ada, norm, normAffine, qkvL, qL, kvL, outL, rmsQ, rmsK, fc1, fc2, gelu }) mod.Dispose();
        return log;
    }

    private static List<Piece> Stage2(ScalarType dt, double radius)
    {
        var log = new List<Piece>();
        var fine = new SparseCoordinates(Stage2Profile.Shell(radius, 3), 64);
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
        using (var scope = torch.NewDisposeScope())
        {
            var m = Time(log, "adaLN modulation (SiLU + 1024→6144)", Gemm(1, C, 6 * C), () => block.adaLN_modulation!.forward(temb));
            var rows = Time(log, "modulation rows (PerRow)", 0, () => xs.PerRow(m));
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
            Time(log, "whole block, first call (computes the context K/V)", total, () => block.Forward(xs, temb, ctx).Feats);
            Time(log, "whole block, second call (K/V cached)", total - Gemm(Ctx, C, 2 * C), () => block.Forward(xs, temb, ctx).Feats);
        }
        foreach (var mod in new nn.Module[] { norm, normAffine, qkvL, qL, kvL, outL, rmsQ, rmsK, fc1, fc2, gelu }) mod.Dispose();
        return log;
    }
}
