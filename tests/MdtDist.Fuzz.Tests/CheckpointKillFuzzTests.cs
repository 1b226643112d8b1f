using System.Collections.Concurrent;
using MdtDist.Fuzz;
using Xunit;
using Xunit.Abstractions;

namespace MdtDist.Fuzz.Tests;

/// <summary>
/// <c>kill -9</c> during training, checkpointing and pruning: a child process trains a tiny distiller with a
/// checkpoint and a prune after every step and is killed at seeded points (after 1–2 steps, plus 0–40 ms); the next
/// child resumes. The final checkpoint must equal, byte for byte, the one of an uninterrupted run, and no leftover of an
/// interrupted write or prune may survive. Where a kill lands depends on timing; the verdict does not.
/// </summary>
public sealed class CheckpointKillFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const int Steps = 12;
    private readonly string _root = Directory.CreateTempSubdirectory("mdtdist-kill-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    /// <summary>Runs a child to completion or until <paramref name="killAfterSteps"/> STEP lines (+ delay) and kills it. Returns true when it finished.</summary>
    private bool RunChild(string dir, int? killAfterSteps, int delayMs)
    {
        using var p = FuzzCampaign.StartChild(new[] { "train", "--dir", dir, "--steps", Steps.ToString(System.Globalization.CultureInfo.InvariantCulture) }, new CampaignOptions());
        var lines = new BlockingCollection<string?>();
        p.OutputDataReceived += (_, e) => lines.Add(e.Data);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) output.WriteLine("child stderr: " + e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        int seen = 0;
        while (lines.TryTake(out var line, TimeSpan.FromSeconds(180)))
        {
            if (line is null) break;
            if (line == "DONE") { p.WaitForExit(); return p.ExitCode == 0; }
            if (line.StartsWith("STEP", StringComparison.Ordinal) && killAfterSteps is { } k && ++seen >= k)
            {
                if (delayMs > 0) Thread.Sleep(delayMs);
                try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                p.WaitForExit();
                return false;
            }
        }
        try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        p.WaitForExit();
        Assert.Fail($"the training child stopped without finishing (exit {p.ExitCode}).");
        return false;
    }

    [Fact]
    public void KilledTrainingResumesBitExactly()
    {
        var reference = Path.Combine(_root, "reference");
        Assert.True(RunChild(reference, null, 0));

        var killed = Path.Combine(_root, "killed");
        var rng = new Random(31);
        int kills = 0;
        bool finished = false;
        for (int attempt = 0; attempt < 30 && !finished; attempt++)
        {
            bool kill = kills < 8;
            finished = RunChild(killed, kill ? rng.Next(1, 3) : null, rng.Next(0, 41));
            if (!finished) kills++;
        }
        output.WriteLine($"{kills} kills");
        Assert.True(finished, "training never finished");
        // At least one kill must land mid-run (how many fit depends on the machine's speed, which a test must not assume).
        Assert.True(kills >= 1, $"no kill landed before the run finished");

        var final = "step-" + Steps.ToString("D9", System.Globalization.CultureInfo.InvariantCulture);
        var refFiles = Directory.GetFiles(Path.Combine(reference, final)).Select(Path.GetFileName).Order().ToArray();
        var gotFiles = Directory.GetFiles(Path.Combine(killed, final)).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(refFiles, gotFiles);
        foreach (var f in refFiles)
            Assert.True(File.ReadAllBytes(Path.Combine(reference, final, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(killed, final, f!))),
                $"{f} differs from the uninterrupted run");
        // What survives: complete checkpoints only (the newest two, or three when the last kill came between the
        // final save and its prune), no hidden leftover of an interrupted write or prune.
        var left = Directory.GetDirectories(killed).Select(Path.GetFileName).Order().ToArray();
        Assert.All(left, name => Assert.StartsWith("step-", name));
        Assert.Contains(final, left);
        Assert.InRange(left.Length, 2, 3);
        Assert.Equal(left, MdtDist.Core.Training.CheckpointStore.List(killed).Select(Path.GetFileName).Order().ToArray());
    }
}
