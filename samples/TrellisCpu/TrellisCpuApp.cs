using System.CommandLine;
using MdtDist.Trellis.Pipeline;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>
/// TRELLIS-image-large on the CPU, measured end to end from one command: the released architecture at full size with
/// random weights (DINOv2 ViT-L/14-reg, both flows, structure decoder, Gaussian and mesh decoders, FlexiCubes) under
/// MDT-dist student schedules, with the 25-step guided teacher extrapolated from the measured per-evaluation times.
/// Writes <c>results.md</c> and <c>results.json</c>.
/// </summary>
public static class TrellisCpuApp
{
    /// <summary>Command-line entry point; returns the exit code (0 ok, 130 cancelled, 3 bad input).</summary>
    public static int Run(string[] args)
    {
        var dtypeOpt = new Option<string>("--dtype") { Description = "weight and compute dtype: float32, bfloat16, float16 (only on a CPU with avx512_fp16 / amx_fp16), or auto (bfloat16 only on a CPU with native bf16: avx512_bf16 / amx_bf16)", DefaultValueFactory = _ => "auto" };
        var threadsOpt = new Option<int?>("--threads") { Description = "libtorch intra-op threads (default: libtorch's choice, one per core)" };
        var scheduleOpt = new Option<string>("--schedule") { Description = $"comma-separated schedules to measure: {string.Join(", ", BenchmarkSchedule.Known.Select(s => s.Name))} (the teacher row is extrapolated when not measured)", DefaultValueFactory = _ => "student-1,student-2" };
        var voxelsOpt = new Option<int>("--voxels") { Description = "voxels of the stage-2 structure (a 3-voxel-thick sphere shell in the 64³ grid)", DefaultValueFactory = _ => 20_000 };
        var outOpt = new Option<string>("--out") { Description = "folder for results.md and results.json", DefaultValueFactory = _ => "trellis-cpu" };
        var blocksOpt = new Option<int?>("--blocks") { Description = "transformer blocks of every network (quick runs; default: the released depths 24 / 24 / 12)" };
        var tinyOpt = new Option<bool>("--tiny") { Description = "toy widths (a smoke test in seconds)" };
        var decodeAllOpt = new Option<bool>("--decode-every-schedule") { Description = "run the decoders after every schedule (default: after the first; later rows reuse its decoder times)" };
        var compareOpt = new Option<string?>("--compare") { Description = "instead of the pipeline: each network in float32 and in this dtype (bfloat16 or float16) on the same inputs; relative error and speed (writes precision.md / precision.json)" };
        var noMeshOpt = new Option<bool>("--no-mesh") { Description = "with --compare: leave out the mesh decoder (its 256³ stage needs the most memory)" };
        var rateOpt = new Option<bool>("--matmul-rate") { Description = "instead of the pipeline: the machine's GEMM rate (2048³ float32, bfloat16 and float16 matmuls), the yardstick of the stage times" };
        var guidedOpt = new Option<bool>("--guided-step") { Description = "instead of the pipeline: one guided stage-1 step (width 512, 4 blocks, 16³ unless --blocks) two calls vs one batched call, K/V cache on vs off" };
        var noTrimOpt = new Option<bool>("--no-heap-trim") { Description = "leave freed native memory with the allocator between stages (default: glibc's malloc_trim before each stage, so peaks count live memory)" };
        var seedOpt = new Option<long>("--seed") { Description = "seed of the random weights and noise", DefaultValueFactory = _ => 1 };

        var root = new RootCommand("TrellisCpu: the whole TRELLIS-image-large architecture on the CPU, timed stage by stage.");
        foreach (var o in new Option[] { dtypeOpt, threadsOpt, scheduleOpt, voxelsOpt, outOpt, blocksOpt, tinyOpt, decodeAllOpt, compareOpt, noMeshOpt, rateOpt, guidedOpt, noTrimOpt, seedOpt }) root.Options.Add(o);

        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 200);
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            AnsiConsole.MarkupLine("[yellow]Stopping after the current stage...[/]");
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        root.SetAction(pr =>
        {
            try
            {
                if (pr.GetValue(threadsOpt) is { } t)
                {
                    if (t < 1) throw new ArgumentException($"--threads must be >= 1, got {t}.");
                    torch.set_num_threads(t);
                }
                if (pr.GetValue(rateOpt)) return MatmulRate();
                if (pr.GetValue(guidedOpt)) return GuidedStepBenchmark.Run(512, pr.GetValue(blocksOpt) ?? 4, 16, 5, pr.GetValue(seedOpt));
                if (pr.GetValue(compareOpt) is { } cmp)
                {
                    var reduced = CpuFeatures.ResolveComputeDType(cmp);
                    if (reduced is not (ScalarType.BFloat16 or ScalarType.Float16))
                        throw new ArgumentException($"--compare takes bfloat16 or float16, got '{cmp}'.");
                    CheckComputeDType(reduced, CpuFeatures.CpuFlags);
                    return Compare(pr.GetValue(tinyOpt) ? NetworkScale.Tiny : NetworkScale.Large, reduced, pr.GetValue(blocksOpt), pr.GetValue(voxelsOpt), pr.GetValue(seedOpt), pr.GetValue(outOpt)!, !pr.GetValue(noMeshOpt));
                }
                var request = pr.GetValue(dtypeOpt)!;
                var dtype = CpuFeatures.ResolveComputeDType(request);
                CheckComputeDType(dtype, CpuFeatures.CpuFlags);
                var settings = new TrellisCpuSettings
                {
                    Scale = pr.GetValue(tinyOpt) ? NetworkScale.Tiny : NetworkScale.Large,
                    DType = dtype,
                    DTypeRequest = request,
                    Schedules = pr.GetValue(scheduleOpt)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(BenchmarkSchedule.Parse).ToList(),
                    Voxels = pr.GetValue(voxelsOpt),
                    Blocks = pr.GetValue(blocksOpt),
                    TrimHeapBetweenStages = !pr.GetValue(noTrimOpt),
                    Seed = pr.GetValue(seedOpt),
                    DecodeEverySchedule = pr.GetValue(decodeAllOpt),
                };
                return Execute(settings, pr.GetValue(outOpt)!, cts.Token);
            }
            catch (OperationCanceledException)
            {
                AnsiConsole.MarkupLine("[yellow]Stopped; nothing written.[/]");
                return 130;
            }
            catch (ArgumentException e)
            {
                AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                return 3;
            }
        });
        try
        {
            return root.Parse(args).Invoke();
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static int Execute(TrellisCpuSettings settings, string outDir, CancellationToken ct)
    {
        AnsiConsole.MarkupLine($"[bold]TrellisCpu[/]: {settings.Scale} networks{(settings.Blocks is { } b ? $" ({b} blocks each)" : "")}, {settings.DType} (requested {Markup.Escape(settings.DTypeRequest)}; native bf16: {CpuFeatures.HasNativeBFloat16}), {torch.get_num_threads()} libtorch threads");
        TrellisCpuReport report = null!;
        var start = DateTime.UtcNow;
        void Line(string line) => AnsiConsole.MarkupLine($"[grey]{(DateTime.UtcNow - start).TotalSeconds,7:F1} s[/] {Markup.Escape(line)}");
        if (Console.IsOutputRedirected)
            report = TrellisCpuBenchmark.Run(settings, new SyncProgress(Line), ct);
        else
            AnsiConsole.Status().Start("starting", ctx =>
            {
                report = TrellisCpuBenchmark.Run(settings, new SyncProgress(line => { Line(line); ctx.Status(Markup.Escape(line)); }), ct);
            });
        var (json, md) = TrellisCpuBenchmark.Write(report, outDir);

        var table = new Table().Border(TableBorder.Rounded);
        table.AddColumn("schedule");
        table.AddColumn(new TableColumn("evals").RightAligned());
        foreach (var s in report.Results[0].Stages) table.AddColumn(new TableColumn(Markup.Escape(s.Stage)).RightAligned());
        table.AddColumn(new TableColumn("total s").RightAligned());
        foreach (var row in report.Results)
        {
            var cells = new List<string> { Markup.Escape(row.Schedule), row.FlowEvaluations.ToString() };
            cells.AddRange(row.Stages.Select(s => $"{s.WallSeconds:F1}{(s.Measured ? "" : "*")}"));
            cells.Add($"[bold]{row.TotalSeconds:F1}[/]");
            table.AddRow(cells.ToArray());
        }
        var first = report.Results[0];
        var cpuCells = new List<string> { "CPU s", "" };
        cpuCells.AddRange(first.Stages.Select(s => $"{s.CpuSeconds:F1}"));
        cpuCells.Add($"{first.Stages.Sum(s => s.CpuSeconds):F1}");
        table.AddRow(cpuCells.ToArray());
        var peakCells = new List<string> { "peak GB", "" };
        peakCells.AddRange(first.Stages.Select(s => s.PeakResidentBytes > 0 ? $"{s.PeakResidentBytes / 1e9:F2}" : ""));
        peakCells.Add("");
        table.AddRow(peakCells.ToArray());
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"peak memory (VmHWM) {report.PeakResidentBytes / 1e9:F2} GB; load average {report.LoadAverage[0]:F2} → {report.LoadAverage[1]:F2}; * = extrapolated or reused");
        AnsiConsole.MarkupLine($"wrote [bold]{Markup.Escape(md)}[/] and {Markup.Escape(json)}");
        return 0;
    }

    /// <summary>
    /// A 16-bit dtype the CPU has no native arithmetic for: bfloat16 is run with a warning (emulated, slower than float32);
    /// float16 is refused (an <see cref="ArgumentException"/>), since libtorch's scalar fallback would take days at full size.
    /// </summary>
    public static void CheckComputeDType(ScalarType dtype, IReadOnlySet<string> flags)
    {
        if (CpuFeatures.ReducedPrecisionWarning(dtype, flags) is not { } why) return;
        if (dtype == ScalarType.Float16) throw new ArgumentException("float16 refused: " + why);
        AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(why)}");
    }

    private static int MatmulRate()
    {
        using var noGrad = torch.no_grad();
        foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
        {
            // float16 without native support runs a scalar loop (< 1 GFLOP/s): a 256³ product is enough to show it
            long n = dt == ScalarType.Float16 && !CpuFeatures.HasNativeFloat16 ? 256 : 2048;
            using var scope = torch.NewDisposeScope();
            var g = new Generator(1);
            var a = torch.randn(new[] { n, n }, generator: g).to(dt);
            var b = torch.randn(new[] { n, n }, generator: g).to(dt);
            a.matmul(b);   // warm-up
            var best = double.MaxValue;
            double cpuAtBest = 0;
            for (int i = 0; i < 5; i++)
            {
                var cpu0 = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime;
                var sw = System.Diagnostics.Stopwatch.StartNew();
                a.matmul(b).Dispose();
                double s = sw.Elapsed.TotalSeconds;
                if (s < best) { best = s; cpuAtBest = (System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds; }
            }
            double gflop = 2.0 * n * n * n / 1e9;
            AnsiConsole.MarkupLine($"{dt}: {gflop / best:F1} GFLOP/s (best of 5 {n}³ matmuls, {best:F3} s wall, {cpuAtBest:F3} s CPU, {torch.get_num_threads()} threads)");
        }
        return 0;
    }

    private static int Compare(NetworkScale scale, ScalarType reduced, int? blocks, int voxels, long seed, string outDir, bool includeMesh)
    {
        var start = DateTime.UtcNow;
        double load0 = File.Exists("/proc/loadavg") ? double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) : double.NaN;
        var results = PrecisionComparison.Run(scale, reduced, blocks, voxels, seed,
            new SyncProgress(line => AnsiConsole.MarkupLine($"[grey]{(DateTime.UtcNow - start).TotalSeconds,7:F1} s[/] {Markup.Escape(line)}")), includeMesh);
        double load1 = File.Exists("/proc/loadavg") ? double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) : double.NaN;
        var context = $"{scale}{(blocks is { } b ? $", {b} blocks" : "")}, {torch.get_num_threads()} threads, native bf16: {CpuFeatures.HasNativeBFloat16}, load average {load0:F2} → {load1:F2}, peak memory {new MdtDist.Core.Training.ProcessPeakMemory().PeakBytes / 1e9:F2} GB";
        var md = PrecisionComparison.ToMarkdown(results, reduced, context);
        Directory.CreateDirectory(outDir);
        TrellisCpuBenchmark.WriteAtomically(Path.Combine(outDir, "precision.md"), md);
        TrellisCpuBenchmark.WriteAtomically(Path.Combine(outDir, "precision.json"), System.Text.Json.JsonSerializer.Serialize(results, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        AnsiConsole.WriteLine(md);
        return 0;
    }

    /// <summary>An <see cref="IProgress{T}"/> that reports on the calling thread (Progress&lt;T&gt; would post to the thread pool).</summary>
    private sealed class SyncProgress(Action<string> report) : IProgress<string>
    {
        public void Report(string value) => report(value);
    }
}
