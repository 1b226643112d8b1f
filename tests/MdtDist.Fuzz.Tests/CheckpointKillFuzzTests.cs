using System.Collections.Concurrent;
using System.Globalization;
using MdtDist.Fuzz;
using Xunit;
using Xunit.Abstractions;

namespace MdtDist.Fuzz.Tests;

/// <summary>
/// <c>kill -9</c> during training and checkpointing: a child process trains a tiny distiller with a checkpoint and a
/// prune after every step; the next child resumes. The final checkpoint must equal, byte for byte, the one of an
/// uninterrupted run, and no leftover of an interrupted write or prune may survive.
/// </summary>
/// <remarks>
/// The kills that the verdict counts are placed by the child itself (it sends SIGKILL to itself at a point the test
/// fixes: after the N-th checkpoint file of its run, for every N of one checkpoint, so inside every gap of an
/// unfinished write; and after its K-th step, between steps), so where they land does not depend on the machine's
/// speed or load. Two more kills from the outside at seeded delays after a step line add landing points the child has
/// no hook for (between a commit and its prune, inside a prune); whether those land before the run ends depends on
/// timing, so nothing is asserted about them beyond the final verdict, which holds wherever they land.
/// </remarks>
public sealed class CheckpointKillFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const int Steps = 12;
    private static readonly string Final = "step-" + Steps.ToString("D9", CultureInfo.InvariantCulture);
    private readonly string _root = Directory.CreateTempSubdirectory("mdtdist-kill-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    /// <summary>How one child ended.</summary>
    private sealed record ChildEnd(bool Finished, IReadOnlyList<string> Lines);

    /// <summary>
    /// Runs a child with <paramref name="extra"/> arguments to its end; with <paramref name="externalKill"/> = (k, ms)
    /// the test kills it itself <c>ms</c> milliseconds after its k-th STEP line, if it is still running then.
    /// </summary>
    private ChildEnd RunChild(string dir, string[] extra, (int AfterSteps, int DelayMs)? externalKill = null)
    {
        var args = new[] { "train", "--dir", dir, "--steps", Steps.ToString(CultureInfo.InvariantCulture) }.Concat(extra);
        using var p = FuzzCampaign.StartChild(args, new CampaignOptions());
        var lines = new BlockingCollection<string?>();
        var seen = new List<string>();
        p.OutputDataReceived += (_, e) => lines.Add(e.Data);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) output.WriteLine("child stderr: " + e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        int steps = 0;
        bool killedByTest = false;
        // The 180 s bound only turns a hung child into a failure; no verdict depends on it.
        while (lines.TryTake(out var line, TimeSpan.FromSeconds(180)))
        {
            if (line is null) break;   // stdout closed: the child exited (finished or killed)
            seen.Add(line);
            if (line.StartsWith("STEP", StringComparison.Ordinal) && externalKill is { } k && ++steps == k.AfterSteps)
            {
                if (k.DelayMs > 0) Thread.Sleep(k.DelayMs);
                // The lines are read behind the child: by now it may have printed DONE and be shutting down, and this
                // kill then ends it with 137 after it finished. That is one of the landing points, not a failure.
                try { p.Kill(entireProcessTree: true); killedByTest = true; } catch (InvalidOperationException) { }
            }
        }
        if (!p.WaitForExit(TimeSpan.FromSeconds(180)))
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            Assert.Fail("the training child hung.");
        }
        p.WaitForExit();
        bool finished = seen.Contains("DONE");
        Assert.True(!finished || p.ExitCode == 0 || killedByTest, $"the child printed DONE but exited with {p.ExitCode}.");
        return new ChildEnd(finished, seen);
    }

    private static string[] Die(string how, int n) => new[] { "--" + how, n.ToString(CultureInfo.InvariantCulture) };

    [Fact]
    public void KilledTrainingResumesBitExactly()
    {
        var reference = Path.Combine(_root, "reference");
        Assert.True(RunChild(reference, Array.Empty<string>()).Finished);
        var refFinal = Path.Combine(reference, Final);
        var refFiles = Directory.GetFiles(refFinal).Select(Path.GetFileName).Order().ToArray();
        int filesPerCheckpoint = refFiles.Length - 1;   // every file but manifest.json goes through the hook
        Assert.True(filesPerCheckpoint >= 3, string.Join(", ", refFiles));

        var killed = Path.Combine(_root, "killed");
        // Self-kills inside the first checkpoint write of a run, after each of its files (the folder is never
        // committed, so the step is lost and a hidden .tmp-step-* folder is left behind), then between steps. Together
        // they advance the run by at most 1 + 2 steps of the 12, so every one of them lands before the end.
        var plan = Enumerable.Range(1, filesPerCheckpoint).Select(n => Die("die-after-file", n))
            .Concat(new[] { Die("die-at-step", 2), Die("die-at-step", 1), Die("die-after-file", filesPerCheckpoint + 2) }).ToList();
        foreach (var extra in plan)
        {
            var end = RunChild(killed, extra);
            var what = string.Join(" ", extra);
            Assert.False(end.Finished, $"{what}: the child finished instead of dying");
            Assert.Contains(end.Lines, l => l.StartsWith("DIE ", StringComparison.Ordinal));
            if (extra[0] == "--die-after-file")
                Assert.True(Directory.GetDirectories(killed, ".tmp-step-*").Length > 0, $"{what}: no interrupted write was left to clean up");
        }
        output.WriteLine($"{plan.Count} self-kills; steps kept: {MdtDist.Core.Training.CheckpointStore.List(killed).Count}");

        // Kills from outside at seeded moments (see the remarks), then a run to the end.
        var rng = new Random(31);
        for (int i = 0; i < 2; i++)
            output.WriteLine($"external kill {i}: the child {(RunChild(killed, Array.Empty<string>(), (rng.Next(1, 3), rng.Next(0, 41))).Finished ? "finished first" : "was killed")}");
        Assert.True(RunChild(killed, Array.Empty<string>()).Finished, "training never finished");

        var gotFiles = Directory.GetFiles(Path.Combine(killed, Final)).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(refFiles, gotFiles);
        foreach (var f in refFiles)
            Assert.True(File.ReadAllBytes(Path.Combine(refFinal, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(killed, Final, f!))),
                $"{f} differs from the uninterrupted run");
        // What survives: complete checkpoints only (the newest two, or three when an external kill came between the
        // final save and its prune), no hidden leftover of an interrupted write or prune.
        var left = Directory.GetDirectories(killed).Select(Path.GetFileName).Order().ToArray();
        Assert.All(left, name => Assert.StartsWith("step-", name));
        Assert.Contains(Final, left);
        Assert.InRange(left.Length, 2, 3);
        Assert.Equal(left, MdtDist.Core.Training.CheckpointStore.List(killed).Select(Path.GetFileName).Order().ToArray());
    }
}
