using System.Diagnostics;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>
/// One guided teacher step (t inside the CFG interval) of a stage-1 flow, four ways: the two passes as two calls or as
/// one 2B-batch call (<see cref="ClassifierFreeGuidance.BatchedPasses"/>), each with the cross-attention K/V cache
/// hitting (the same condition tensor every step, as in a sampler run) or missing (a fresh copy of the condition every
/// step, so every layer projects it again). Median of <c>reps</c> steps after one warm-up, wall and process CPU time.
/// </summary>
internal static class GuidedStepBenchmark
{
    public static int Run(long width, int blocks, long resolution, int reps, long seed)
    {
        var cfg = SparseStructureFlowConfig.ImageLarge with { ModelChannels = width, NumBlocks = blocks, Resolution = resolution, NumHeads = width / 64, UseFp16 = false };
        using var net = RandomTinyTrellis.Randomize(new SparseStructureFlowModel(cfg, ScalarType.Float32), seed);
        net.eval();   // the K/V cache works in eval mode only
        var adapter = new SparseStructureFlowAdapter(net);
        var g = new Generator((ulong)seed);
        using var x = torch.randn(adapter.LatentShape(1), generator: g);
        using var cond = torch.randn(new long[] { 1, 1374, cfg.CondChannels }, generator: g);   // DINOv2-L tokens of one 518² image
        using var t = torch.tensor(new[] { 0.8 });
        using var noGrad = torch.no_grad();
        AnsiConsole.MarkupLine($"stage-1 flow: width {width}, {blocks} blocks, {resolution}³ latent ({resolution * resolution * resolution} tokens), condition 1374 × {cfg.CondChannels}, batch 1, float32, {torch.get_num_threads()} threads; CFG w = 3 inside the interval; median of {reps} after 1 warm-up");
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var c in new[] { "passes", "K/V cache", "wall s / step", "CPU s / step" }) table.AddColumn(c);
        foreach (var batched in new[] { false, true })
            foreach (var cache in new[] { false, true })
            {
                var guided = new ClassifierFreeGuidance(adapter, 3.0, intervalStart: 0.5, intervalEnd: 1.0) { BatchedPasses = batched };
                var walls = new List<double>();
                var cpus = new List<double>();
                for (int i = 0; i <= reps; i++)
                {
                    using var scope = torch.NewDisposeScope();
                    var c = cache ? cond : cond.clone();
                    var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                    var sw = Stopwatch.StartNew();
                    guided.Velocity(Latent.Dense(x), t, c);
                    double wall = sw.Elapsed.TotalSeconds;
                    double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
                    if (i > 0) { walls.Add(wall); cpus.Add(cpu); }
                }
                walls.Sort();
                cpus.Sort();
                table.AddRow(batched ? "one 2B call" : "two calls", cache ? "on (hits)" : "off (misses)", $"{walls[walls.Count / 2]:F3}", $"{cpus[cpus.Count / 2]:F3}");
                AnsiConsole.MarkupLine($"{(batched ? "batched" : "two calls")}, cache {(cache ? "on" : "off")}: wall {string.Join(" ", walls.Select(w => w.ToString("F3")))}");
            }
        AnsiConsole.Write(table);
        double load = File.Exists("/proc/loadavg") ? double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) : double.NaN;
        AnsiConsole.MarkupLine($"load average at the end {load:F2}");
        return 0;
    }
}
