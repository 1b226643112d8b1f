using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace MdtDist.Fuzz;

/// <summary>Settings of a time-boxed mutation campaign.</summary>
public sealed record CampaignOptions
{
    /// <summary>Inputs per target.</summary>
    public int Inputs { get; init; } = 2000;

    /// <summary>The campaign seed: input i of a target is a function of (seed, i) only.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Inputs per child process (a batch that dies is resumed after the input that killed it, which is re-run alone).</summary>
    public int BatchSize { get; init; } = 500;

    /// <summary>Child processes running at once.</summary>
    public int Parallel { get; init; } = 2;

    /// <summary>Seconds one input may take before it counts as a hang.</summary>
    public double InputTimeoutSeconds { get; init; } = 20;

    /// <summary>Seconds a child may take to start and build its seeds.</summary>
    public double StartupTimeoutSeconds { get; init; } = 120;

    /// <summary>Address-space cap of a child (prlimit --as), bytes. 0 = none.</summary>
    public long AddressSpaceBytes { get; init; } = 5L << 30;

    /// <summary>Managed heap cap of a child (DOTNET_GCHeapHardLimit), bytes.</summary>
    public long ManagedHeapBytes { get; init; } = 512L << 20;

    /// <summary>Allocation bound per input: peak resident memory above the level before it, and managed allocations.</summary>
    public long BoundBytes { get; init; } = 512L << 20;

    /// <summary>Folder for the inputs' files (a fresh temporary folder when null).</summary>
    public string? WorkRoot { get; init; }

    /// <summary>Failure examples kept per target.</summary>
    public int MaxExamples { get; init; } = 20;
}

/// <summary>The tally of one target.</summary>
public sealed class TargetReport
{
    /// <summary>Target name.</summary>
    public required string Target { get; init; }

    /// <summary>Count per outcome.</summary>
    public Dictionary<Outcome, int> Counts { get; } = Enum.GetValues<Outcome>().ToDictionary(o => o, _ => 0);

    /// <summary>The first failures (index, outcome, detail).</summary>
    public List<InputResult> Failures { get; } = new();

    /// <summary>Inputs run.</summary>
    public int Tries => Counts.Values.Sum();

    /// <summary>Failing inputs.</summary>
    public int FailureCount => Counts.Where(kv => kv.Key is not (Outcome.Accepted or Outcome.Rejected)).Sum(kv => kv.Value);

    /// <summary>Wall-clock seconds.</summary>
    public double Seconds { get; set; }

    /// <summary>Child processes started.</summary>
    public int Children { get; set; }

    /// <summary>The largest per-input peak resident memory seen, MiB.</summary>
    public double MaxPeakMegabytes { get; set; }

    /// <summary>The markdown table header matching <see cref="ToRow"/>.</summary>
    public const string Header = "| reader | tries | accepted | clear error | unclean exception | hang | over bound | crash | silently accepted |\n|---|---|---|---|---|---|---|---|---|";

    /// <summary>One markdown table row.</summary>
    public string ToRow() =>
        $"| {Target} | {Tries} | {Counts[Outcome.Accepted]} | {Counts[Outcome.Rejected]} | {Counts[Outcome.Unclean]} | {Counts[Outcome.Hang]} | {Counts[Outcome.OverBound]} | {Counts[Outcome.Crash]} | {Counts[Outcome.Silent]} |";
}

/// <summary>
/// Runs a target's inputs in child processes (<c>MdtDist.Fuzz run ...</c>) under an address-space cap, batching many
/// inputs per child, with a watchdog per input; a child that dies or hangs is replaced and the input it was on is
/// re-run alone to classify it.
/// </summary>
public static class FuzzCampaign
{
    /// <summary>Runs <paramref name="inputs"/> inputs of <paramref name="target"/> and tallies them.</summary>
    public static TargetReport Run(string target, CampaignOptions options, Action<string>? log = null)
    {
        FuzzTargets.Get(target);
        var sw = Stopwatch.StartNew();
        var report = new TargetReport { Target = target };
        var work = options.WorkRoot ?? Directory.CreateTempSubdirectory("mdtdist-fuzz-").FullName;
        Directory.CreateDirectory(work);
        var results = new ConcurrentBag<InputResult>();
        int children = 0;
        var batches = new List<(int Start, int Count)>();
        for (int s = 0; s < options.Inputs; s += options.BatchSize) batches.Add((s, Math.Min(options.BatchSize, options.Inputs - s)));
        try
        {
            System.Threading.Tasks.Parallel.ForEach(batches, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Parallel) }, b =>
            {
                int next = b.Start, end = b.Start + b.Count;
                while (next < end)
                {
                    Interlocked.Increment(ref children);
                    var (got, timedOut, exit, stderr) = RunChild(target, options, work, next, end - next);
                    foreach (var r in got) results.Add(r);
                    next = got.Count == 0 ? next : got.Max(r => r.Index) + 1;
                    if (next >= end) break;
                    // The child died or hung on input `next`: run it alone to classify it.
                    Interlocked.Increment(ref children);
                    var (alone, aloneTimedOut, aloneExit, aloneErr) = RunChild(target, options, work, next, 1);
                    if (alone.Count == 1) results.Add(alone[0]);
                    else
                    {
                        var outcome = aloneTimedOut ? Outcome.Hang : IsOomExit(aloneExit, aloneErr) ? Outcome.OverBound : Outcome.Crash;
                        var why = aloneTimedOut ? $"no result within {options.InputTimeoutSeconds} s" : $"child exited with {aloneExit}: {Tail(aloneErr)}";
                        results.Add(new InputResult(next, outcome, -1, -1, why));
                        log?.Invoke($"{target} #{next}: {outcome} ({why})");
                    }
                    next++;
                }
            });
        }
        finally
        {
            if (options.WorkRoot is null) try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        }
        foreach (var r in results.OrderBy(r => r.Index))
        {
            report.Counts[r.Outcome]++;
            report.MaxPeakMegabytes = Math.Max(report.MaxPeakMegabytes, r.PeakMegabytes);
            if (r.IsFailure && report.Failures.Count < options.MaxExamples) report.Failures.Add(r);
        }
        report.Children = children;
        report.Seconds = sw.Elapsed.TotalSeconds;
        return report;
    }

    private static bool IsOomExit(int exit, string stderr) =>
        stderr.Contains("OutOfMemory", StringComparison.Ordinal) || stderr.Contains("bad_alloc", StringComparison.Ordinal)
        || stderr.Contains("can't allocate", StringComparison.OrdinalIgnoreCase);

    private static string Tail(string s)
    {
        s = s.Trim().Replace('\n', ' ');
        return s.Length <= 300 ? s : "..." + s[^300..];
    }

    /// <summary>Path of the runner assembly (this assembly).</summary>
    public static string RunnerAssembly => typeof(FuzzCampaign).Assembly.Location;

    /// <summary>
    /// Starts the runner (this assembly) with <paramref name="runnerArgs"/> as a child process under the options'
    /// address-space and managed-heap caps, single-threaded, with stdout and stderr redirected.
    /// </summary>
    public static Process StartChild(IEnumerable<string> runnerArgs, CampaignOptions o)
    {
        var inv = CultureInfo.InvariantCulture;
        var psi = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var dotnet = Environment.ProcessPath is { } pp && Path.GetFileNameWithoutExtension(pp) == "dotnet" ? pp : "dotnet";
        var args = new List<string>();
        if (o.AddressSpaceBytes > 0 && File.Exists("/usr/bin/prlimit"))
        {
            psi.FileName = "/usr/bin/prlimit";
            args.AddRange(new[] { "--as=" + o.AddressSpaceBytes.ToString(inv), "--", dotnet });
        }
        else psi.FileName = dotnet;
        args.Add("exec");
        var dir = Path.GetDirectoryName(RunnerAssembly)!;
        if (!File.Exists(Path.Combine(dir, "MdtDist.Fuzz.runtimeconfig.json")) || !File.Exists(Path.Combine(dir, "MdtDist.Fuzz.deps.json")))
        {
            // Referenced from a test project that did not copy them: run with the host's dependency and runtime files.
            var host = Directory.GetFiles(dir, "*.deps.json").FirstOrDefault(f => !f.EndsWith("MdtDist.Fuzz.deps.json", StringComparison.Ordinal));
            var rc = Directory.GetFiles(dir, "*.runtimeconfig.json").FirstOrDefault();
            if (host is not null) args.AddRange(new[] { "--depsfile", host });
            if (rc is not null) args.AddRange(new[] { "--runtimeconfig", rc });
        }
        args.Add(RunnerAssembly);
        args.AddRange(runnerArgs);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_GCHeapHardLimit"] = "0x" + o.ManagedHeapBytes.ToString("X", inv);
        psi.Environment["DOTNET_gcServer"] = "0";
        psi.Environment["DOTNET_TieredPGO"] = "0";
        psi.Environment["OMP_NUM_THREADS"] = "1";
        psi.Environment["MKL_NUM_THREADS"] = "1";
        return new Process { StartInfo = psi };
    }

    private static (List<InputResult> Results, bool TimedOut, int Exit, string Stderr) RunChild(string target, CampaignOptions o, string work, int start, int count)
    {
        var inv = CultureInfo.InvariantCulture;
        using var p = StartChild(new[] { "run", "--target", target, "--seed", o.Seed.ToString(inv), "--start", start.ToString(inv), "--count", count.ToString(inv),
            "--work", Path.Combine(work, $"w{start}"), "--bound", o.BoundBytes.ToString(inv) }, o);
        var results = new List<InputResult>();
        var stderr = new StringBuilder();
        var lines = new BlockingCollection<string?>();
        p.OutputDataReceived += (_, e) => lines.Add(e.Data);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) { if (stderr.Length < 20000) stderr.AppendLine(e.Data); } };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        bool timedOut = false, started = false;
        while (true)
        {
            var timeout = TimeSpan.FromSeconds(started ? o.InputTimeoutSeconds : o.StartupTimeoutSeconds);
            if (!lines.TryTake(out var line, timeout))
            {
                timedOut = true;
                try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                break;
            }
            if (line is null) break; // end of stdout
            if (line == "READY") { started = true; continue; }
            if (InputResult.Parse(line) is { } r) results.Add(r);
        }
        p.WaitForExit();
        int exit = p.ExitCode;
        lock (stderr) return (results, timedOut, exit, stderr.ToString());
    }

    /// <summary>A markdown table of <paramref name="reports"/> with the first failures of each.</summary>
    public static string Format(IEnumerable<TargetReport> reports, bool withFailures = true)
    {
        var sb = new StringBuilder(TargetReport.Header).Append('\n');
        var list = reports.ToList();
        foreach (var r in list) sb.Append(r.ToRow()).Append('\n');
        foreach (var r in list)
        {
            sb.Append(CultureInfo.InvariantCulture, $"\n{r.Target}: {r.Tries} inputs in {r.Seconds:F1} s, {r.Children} child processes, largest per-input peak +{r.MaxPeakMegabytes:F0} MiB\n");
            if (!withFailures) continue;
            foreach (var f in r.Failures) sb.Append(CultureInfo.InvariantCulture, $"  #{f.Index} {f.Outcome}: {f.Detail}\n");
        }
        return sb.ToString();
    }
}
