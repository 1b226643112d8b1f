using System.Diagnostics;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>One network's output in a reduced dtype against float32.</summary>
/// <param name="Network">Network name.</param>
/// <param name="Output">Which output is compared.</param>
/// <param name="RelativeError">‖y16 − y32‖₂ / ‖y32‖₂ over the whole output (computed in float64).</param>
/// <param name="Float32Seconds">Wall seconds of the float32 forward.</param>
/// <param name="ReducedSeconds">Wall seconds of the reduced-dtype forward.</param>
/// <param name="Float32CpuSeconds">Process CPU seconds of the float32 forward.</param>
/// <param name="ReducedCpuSeconds">Process CPU seconds of the reduced-dtype forward.</param>
public sealed record PrecisionResult(string Network, string Output, double RelativeError, double Float32Seconds, double ReducedSeconds,
    double Float32CpuSeconds, double ReducedCpuSeconds);

/// <summary>
/// Accuracy and speed of a reduced compute dtype (bfloat16) against float32, network by network: each network is built
/// once in float32 with random weights, run on fixed inputs, converted in place to the reduced dtype (the same weights,
/// rounded) and run on the same inputs rounded to that dtype. One network is held at a time (peak memory: the largest
/// network in float32 plus its activations).
/// </summary>
public static class PrecisionComparison
{
    /// <summary>Runs the comparison.</summary>
    /// <param name="scale">Network sizes.</param>
    /// <param name="reduced">The reduced dtype (bfloat16 or float16).</param>
    /// <param name="blocks">Transformer blocks per network (null: released depth).</param>
    /// <param name="voxels">Voxels of the stage-2 shell.</param>
    /// <param name="seed">Seed.</param>
    /// <param name="progress">One line per network.</param>
    /// <param name="includeMesh">Compare the mesh decoder too (its 256³ stage needs the most memory).</param>
    public static IReadOnlyList<PrecisionResult> Run(NetworkScale scale, ScalarType reduced, int? blocks, int voxels, long seed = 1, IProgress<string>? progress = null, bool includeMesh = true)
    {
        using var noGrad = torch.no_grad();
        var results = new List<PrecisionResult>();
        var g = new Generator((ulong)seed + 100);
        var (coords, _) = StructureShapes.ShellWithVoxelCount(voxels);
        bool large = scale == NetworkScale.Large;
        long cond = large ? 1024 : 64;
        var tokens = torch.randn(new long[] { 1, 1374, cond }, generator: g);
        tokens = nn.functional.layer_norm(tokens, new[] { cond });   // DINOv2 tokens are layer-normed by TRELLIS
        var t = torch.full(new long[] { 1 }, 1000.0);

        PrecisionResult Compare<TModule>(string name, string output, Func<TModule> build, Func<TModule, ScalarType, Tensor> forward) where TModule : nn.Module
        {
            progress?.Report($"{name}: float32");
            using var module = build();
            module.eval();
            var (y32, s32, c32) = Timed(() => forward(module, ScalarType.Float32));
            module.to(reduced);
            progress?.Report($"{name}: {reduced}");
            var (y16, s16, c16) = Timed(() => forward(module, reduced));
            double err;
            using (var scope = torch.NewDisposeScope())
            {
                var a = y32.to(ScalarType.Float64);
                var b = y16.to(ScalarType.Float64);
                err = (b - a).norm().item<double>() / a.norm().item<double>();
            }
            y32.Dispose();
            y16.Dispose();
            return new PrecisionResult(name, output, err, s32, s16, c32, c16);
        }

        // DINOv2 on a seeded image tensor (ImageNet-normalised range)
        var image = torch.randn(new long[] { 1, 3, 518, 518 }, generator: g);
        results.Add(Compare("image encoder (DINOv2)", "layer-normed tokens [1, 1374, C]",
            () => TrellisCpuNetworks.Randomize(new Dinov2Model(large ? Dinov2Config.VitL14Reg with { Depth = blocks ?? 24 } : new Dinov2Config(64, blocks ?? 1, 2)), seed),
            (m, dt) => m.forward(image.to(dt)).to(ScalarType.Float32)));

        var nets = TrellisCpuNetworks.Configs(scale, blocks, cond);
        var noise1 = torch.randn(new long[] { 1, 8, 16, 16, 16 }, generator: g);
        results.Add(Compare("stage-1 flow", "velocity [1, 8, 16, 16, 16] at t = 1",
            () => TrellisCpuNetworks.Randomize(new SparseStructureFlowModel(nets.StructureFlow), seed + 1),
            (m, dt) => m.forward(noise1.to(dt), t.to(dt), tokens.to(dt)).to(ScalarType.Float32)));
        results.Add(Compare("structure decoder", "occupancy logits [1, 1, 64, 64, 64]",
            () => TrellisCpuNetworks.Randomize(new SparseStructureDecoder(nets.StructureDecoder), seed + 2),
            (m, dt) => m.forward(noise1.to(dt)).to(ScalarType.Float32)));
        var noise2 = torch.randn(new[] { coords.shape[0], 8L }, generator: g);
        results.Add(Compare("stage-2 flow", $"velocity [{coords.shape[0]}, 8] at t = 1",
            () => TrellisCpuNetworks.Randomize(new SLatFlowModel(nets.LatentFlow), seed + 3),
            (m, dt) => m.forward(new SparseTensor(noise2.to(dt), coords, 64), t.to(dt), tokens.to(dt)).Feats.to(ScalarType.Float32)));
        var slat = new SparseTensor(noise2, coords, 64);
        results.Add(Compare("Gaussian decoder", "Gaussian parameters (xyz, colour, scale, opacity, rotation)",
            () => TrellisCpuNetworks.Randomize(new SLatGaussianDecoder(nets.GaussianDecoder), seed + 4),
            (m, dt) =>
            {
                var gs = m.forward(slat.ReplaceFeats(slat.Feats.to(dt)));
                var y = torch.cat(gs.SelectMany(x => new[] { x.Xyz, x.FeaturesDc.flatten(1), x.Scaling, x.Opacity, x.Rotation }).Select(v => v.to(ScalarType.Float32)).ToArray(), 1);
                foreach (var x in gs) x.Dispose();
                return y;
            }));
        if (!includeMesh) return results;
        results.Add(Compare("mesh decoder", "FlexiCubes inputs (vertex attributes: SDF, deformation, colour, normals)",
            () => TrellisCpuNetworks.Randomize(new SLatMeshDecoder(nets.MeshDecoder), seed + 5),
            (m, dt) =>
            {
                var inputs = m.forward(slat.ReplaceFeats(slat.Feats.to(dt)));
                var y = inputs[0].VertexAttributes.to(ScalarType.Float32);
                foreach (var x in inputs) x.Dispose();
                return y;
            }));
        return results;
    }

    /// <summary>The results as a Markdown table.</summary>
    public static string ToMarkdown(IReadOnlyList<PrecisionResult> results, ScalarType reduced, string context)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{reduced} against float32, network by network ({context})");
        sb.AppendLine();
        sb.AppendLine($"| network | output | relative error (2-norm) | float32 wall s | {reduced} wall s | speed-up (wall) | float32 CPU s | {reduced} CPU s | speed-up (CPU) |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        string F(double v, string f) => v.ToString(f, System.Globalization.CultureInfo.InvariantCulture);
        foreach (var r in results)
            sb.AppendLine($"| {r.Network} | {r.Output} | {F(r.RelativeError, "E2")} | {F(r.Float32Seconds, "F2")} | {F(r.ReducedSeconds, "F2")} | {F(r.Float32Seconds / r.ReducedSeconds, "F2")}× | {F(r.Float32CpuSeconds, "F2")} | {F(r.ReducedCpuSeconds, "F2")} | {F(r.Float32CpuSeconds / r.ReducedCpuSeconds, "F2")}× |");
        return sb.ToString();
    }

    private static (Tensor Y, double Wall, double Cpu) Timed(Func<Tensor> f)
    {
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        Tensor y;
        using (var scope = torch.NewDisposeScope()) y = f().MoveToOuterDisposeScope();
        return (y, sw.Elapsed.TotalSeconds, (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds);
    }
}
