using System.Globalization;
using MdtDist.Fuzz;

// A plain argument parser: the harness has five fixed commands and is not a user-facing tool.
static string Arg(string[] a, string name, string? fallback = null)
{
    int i = Array.IndexOf(a, "--" + name);
    if (i >= 0 && i + 1 < a.Length) return a[i + 1];
    return fallback ?? throw new ArgumentException($"missing --{name}");
}
static int IntArg(string[] a, string name, int fallback) => int.Parse(Arg(a, name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);

if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine("""
        MdtDist.Fuzz — fuzzing harness for MdtDist's file readers (see docs/fuzzing.md)
          list                                              the targets
          campaign [--targets a,b] [--inputs 2000] [--seed 1] [--parallel 2] [--batch 500]
                                                            the time-boxed mutation run (child processes, memory cap)
          run --target T --seed S --start I --count N --work DIR [--bound BYTES]
                                                            (child) runs inputs I..I+N-1, one result line each
          repro --target T --seed S --index I [--out DIR]   writes input I's files to DIR and reads them in-process
          seeds --target T --out DIR                        writes the seed inputs as raw files (an AFL++/libFuzzer corpus)
          afl --target T                                    SharpFuzz entry point for afl-fuzz (instrumented assemblies)
          libfuzzer --target T                              SharpFuzz entry point for libFuzzer (libfuzzer-dotnet)
        """);
    return 0;
}

switch (args[0])
{
    case "list":
        foreach (var t in FuzzTargets.All) Console.WriteLine($"{t.Name,-22} {t.EntryPoint}; documented: {string.Join(", ", t.DocumentedExceptions.Select(e => e.Name))}");
        return 0;

    case "run":
    {
        var target = FuzzTargets.Get(Arg(args, "target"));
        int seed = IntArg(args, "seed", 1), start = IntArg(args, "start", 0), count = IntArg(args, "count", 1);
        long bound = long.Parse(Arg(args, "bound", (512L << 20).ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
        var work = Arg(args, "work");
        Directory.CreateDirectory(work);
        _ = target.Seeds;
        // Readers must refuse, before allocating, what would take more than the bound.
        MdtDist.Core.IO.ReadLimits.MaxAllocationBytes = bound;
        var stdout = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        stdout.WriteLine("READY");
        for (int i = start; i < start + count; i++)
        {
            var c = InputRunner.Generate(target, seed, i);
            var r = InputRunner.RunOne(target, c, i, Path.Combine(work, "c" + i.ToString(CultureInfo.InvariantCulture)), bound);
            stdout.WriteLine(r.ToLine());
        }
        try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        return 0;
    }

    case "repro":
    {
        var target = FuzzTargets.Get(Arg(args, "target"));
        int seed = IntArg(args, "seed", 1), index = IntArg(args, "index", 0);
        var c = InputRunner.Generate(target, seed, index);
        var outDir = Arg(args, "out", Path.Combine(Path.GetTempPath(), $"mdtdist-fuzz-{target.Name}-{seed}-{index}"));
        Console.WriteLine($"input #{index}: {string.Join("; ", c.Mutations)}{(c.MustReject ? " (must be rejected: " + c.MustRejectReason + ")" : "")}");
        c.WriteTo(outDir);
        Console.WriteLine($"files in {outDir}");
        try { target.Read(outDir, c); Console.WriteLine("accepted"); }
        catch (Exception e) { Console.WriteLine(e); }
        return 0;
    }

    case "seeds":
    {
        var target = FuzzTargets.Get(Arg(args, "target"));
        var outDir = Arg(args, "out");
        Directory.CreateDirectory(outDir);
        int k = 0;
        foreach (var s in target.Seeds)
        {
            var names = s.Keys.Where(n => target.Weight(n) > 0).OrderBy(n => n, StringComparer.Ordinal).ToArray();
            for (int f = 0; f < names.Length; f++)
            {
                var raw = names.Length == 1 ? s[names[f]] : new[] { (byte)f }.Concat(s[names[f]]).ToArray();
                File.WriteAllBytes(Path.Combine(outDir, $"seed-{k++}"), raw);
            }
        }
        Console.WriteLine($"{k} seed files in {outDir}");
        return 0;
    }

    case "afl":
    case "libfuzzer":
    {
        var target = FuzzTargets.Get(Arg(args, "target"));
        _ = target.Seeds;
        var dir = Directory.CreateTempSubdirectory("mdtdist-sharpfuzz-").FullName;
        void One(ReadOnlySpan<byte> data)
        {
            var c = target.FromRawInput(data);
            var folder = Path.Combine(dir, "case");
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            c.WriteTo(folder);
            try { target.Read(folder, c); }
            catch (Exception e) when (target.DocumentedExceptions.Any(t => t.IsInstanceOfType(e))) { /* a clean rejection */ }
            if (c.MustReject) throw new SilentlyAcceptedException("accepted although " + c.MustRejectReason);
        }
        if (args[0] == "afl")
            SharpFuzz.Fuzzer.OutOfProcess.Run(stream =>
            {
                using var ms = new MemoryStream();
                stream.CopyTo(ms);
                One(ms.ToArray());
            });
        else
            SharpFuzz.Fuzzer.LibFuzzer.Run(span => One(span));
        return 0;
    }

    case "train":
    {
        // The kill test's child: resume from --dir if possible, then train the tiny distiller to --steps with a
        // checkpoint (and a prune) after every step, printing one line per step. A simulated kill -9 (SIGKILL to
        // itself: no finally block, no flush, no cleanup) at a point fixed by the caller, independent of speed:
        // --die-after-file N right after this run's N-th checkpoint file is written (mid-write: the folder is not
        // committed yet), --die-at-step K when this run's K-th step has been taken, before its checkpoint is written.
        var dir = Arg(args, "dir");
        int steps = IntArg(args, "steps", 10);
        int dieAfterFile = IntArg(args, "die-after-file", 0), dieAtStep = IntArg(args, "die-at-step", 0);
        using var d = MdtDist.Fuzz.Targets.TrainingCheckpointTarget.CreateDistiller(keep: 2, checkpointDirectory: dir, checkpointEvery: 1);
        d.TryResume(dir);
        var stdout = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        stdout.WriteLine($"RESUMED {d.Step}");
        static void Die(StreamWriter o, string where)
        {
            o.WriteLine("DIE " + where);
            System.Diagnostics.Process.GetCurrentProcess().Kill();
            Thread.Sleep(Timeout.Infinite);
        }
        int files = 0, taken = 0;
        if (dieAfterFile > 0) d.CheckpointFileWritten = name => { if (++files == dieAfterFile) Die(stdout, $"after file {files} ({name})"); };
        d.Train(new MdtDist.Core.Training.DelegateDataSource(MdtDist.Fuzz.Targets.TrainingCheckpointTarget.Batch), steps,
            new SyncProgress(p =>
            {
                stdout.WriteLine($"STEP {p.Step}");
                if (++taken == dieAtStep) Die(stdout, $"at step {p.Step}");
            }));
        stdout.WriteLine("DONE");
        return 0;
    }

    case "campaign":
    {
        var names = Arg(args, "targets", string.Join(",", FuzzTargets.All.Select(t => t.Name))).Split(',', StringSplitOptions.RemoveEmptyEntries);
        var o = new CampaignOptions
        {
            Inputs = IntArg(args, "inputs", 2000), Seed = IntArg(args, "seed", 1),
            Parallel = IntArg(args, "parallel", 2), BatchSize = IntArg(args, "batch", 500),
        };
        var reports = new List<TargetReport>();
        foreach (var n in names)
        {
            var r = FuzzCampaign.Run(n, o, Console.Error.WriteLine);
            Console.Error.WriteLine(r.ToRow());
            reports.Add(r);
        }
        Console.WriteLine(FuzzCampaign.Format(reports));
        return reports.Any(r => r.FailureCount > 0) ? 1 : 0;
    }

    default:
        Console.Error.WriteLine($"unknown command '{args[0]}' (try --help)");
        return 2;
}

/// <summary>Reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
sealed class SyncProgress(Action<MdtDist.Core.Training.DistillationProgress> report) : IProgress<MdtDist.Core.Training.DistillationProgress>
{
    public void Report(MdtDist.Core.Training.DistillationProgress value) => report(value);
}
