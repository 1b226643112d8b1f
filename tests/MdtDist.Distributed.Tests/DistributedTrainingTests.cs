using System.Diagnostics;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Distributed.Tests;

/// <summary>
/// Data-parallel MDT-dist over MPI: each test launches <c>mpiexec.mpich -n 2</c> on the worker program (a tiny
/// distillation of a 2-D MLP teacher, <c>tests/MdtDist.Distributed.Worker</c>). They need MPICH
/// (<c>apt-get install mpich libmpich-dev</c>; <c>.ci/run</c> installs it) and fail, not skip, without it.
/// </summary>
public sealed class DistributedTrainingTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "mdtdist-dist-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static string WorkerDll => Path.Combine(AppContext.BaseDirectory, "MdtDist.Distributed.Worker.dll");

    private static string MpiExec =>
        new[] { "/usr/bin/mpiexec.mpich", "/usr/local/bin/mpiexec.mpich" }.FirstOrDefault(File.Exists)
        ?? throw new InvalidOperationException("mpiexec.mpich not found: install MPICH (apt-get install mpich libmpich-dev) to run the distributed tests.");

    private sealed record RunResult(int ExitCode, string Output, TimeSpan Elapsed);

    private RunResult Run(int ranks, TimeSpan limit, params string[] args)
    {
        Directory.CreateDirectory(_dir);
        var psi = new ProcessStartInfo(ranks > 0 ? MpiExec : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (ranks > 0) { psi.ArgumentList.Add("-n"); psi.ArgumentList.Add(ranks.ToString()); psi.ArgumentList.Add("dotnet"); }
        psi.ArgumentList.Add(WorkerDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        var watch = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"the worker did not finish within {limit.TotalSeconds} s: {string.Join(' ', args)}");
        }
        p.WaitForExit();
        var text = stdout.Result + stderr.Result;
        output.WriteLine($"$ {(ranks > 0 ? $"mpiexec -n {ranks} " : "")}worker {string.Join(' ', args)}  -> exit {p.ExitCode} in {watch.Elapsed.TotalSeconds:F1} s");
        output.WriteLine(text.Length > 3000 ? text[^3000..] : text);
        return new RunResult(p.ExitCode, text, watch.Elapsed);
    }

    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(180);

    private static Dictionary<string, Tensor> Load(string path) => SafeTensors.Load(path);

    private static double MaxAbsDiff(Dictionary<string, Tensor> a, Dictionary<string, Tensor> b)
    {
        Assert.Equal(a.Keys.OrderBy(k => k), b.Keys.OrderBy(k => k));
        return a.Max(kv => (kv.Value.to(ScalarType.Float64) - b[kv.Key].to(ScalarType.Float64)).abs().max().item<double>());
    }

    private static bool BitEqual(Dictionary<string, Tensor> a, Dictionary<string, Tensor> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var o) && kv.Value.Equals(o));

    [Fact]
    public void TwoRanksHoldIdenticalWeightsEqualToOneProcessOnTheConcatenatedBatch()
    {
        // Each rank trains on its half of the global batch with the draws a single process would use for those
        // samples; rank 1 starts from other random weights (rank 0's are broadcast). Expected: ranks bit-identical;
        // equal to one process with the two halves as micro-batches. Tolerance 1e-6 absolute (float32 weights of
        // size O(1), 4 AdamW steps of 1e-3): the only difference allowed is the order of the two-term gradient sum,
        // and g0/2 + g1/2 = (g0 + g1)/2 exactly, so in practice it is 0.
        var two = Run(2, Limit, "mode=pinned", "steps=4", $"out={_dir}/two");
        Assert.Equal(0, two.ExitCode);
        var one = Run(0, Limit, "mode=single-pinned", "parts=2", "steps=4", $"out={_dir}/one");
        Assert.Equal(0, one.ExitCode);
        using var scope = torch.NewDisposeScope();
        var r0 = Load($"{_dir}/two.rank0.safetensors");
        var r1 = Load($"{_dir}/two.rank1.safetensors");
        var single = Load($"{_dir}/one.rank0.safetensors");
        Assert.True(BitEqual(r0, r1), "the two ranks must hold bit-identical weights and EMAs");
        double diff = MaxAbsDiff(r0, single);
        output.WriteLine($"max |2 ranks - 1 process| = {diff:E2} (bit-identical: {BitEqual(r0, single)})");
        Assert.True(diff <= 1e-6, $"2-rank weights differ from the single-process run by {diff:E2}");
    }

    [Fact]
    public void FlowMatchingTrainerRunsDataParallelThroughTheSameLoop()
    {
        // pinned draws: 2 ranks vs one process on the concatenated batch (same tolerance argument as above)
        Assert.Equal(0, Run(2, Limit, "trainer=fm", "mode=pinned", "steps=4", $"out={_dir}/fm2").ExitCode);
        Assert.Equal(0, Run(0, Limit, "trainer=fm", "mode=single-pinned", "parts=2", "steps=4", $"out={_dir}/fm1").ExitCode);
        // the Train loop with per-rank noise streams: ranks stay identical
        Assert.Equal(0, Run(2, Limit, "trainer=fm", "mode=train", "steps=5", $"out={_dir}/fmt").ExitCode);
        using var scope = torch.NewDisposeScope();
        var r0 = Load($"{_dir}/fm2.rank0.safetensors");
        Assert.True(BitEqual(r0, Load($"{_dir}/fm2.rank1.safetensors")));
        double diff = MaxAbsDiff(r0, Load($"{_dir}/fm1.rank0.safetensors"));
        output.WriteLine($"flow matching: max |2 ranks - 1 process| = {diff:E2}");
        Assert.True(diff <= 1e-6, $"2-rank weights differ from the single-process run by {diff:E2}");
        Assert.True(BitEqual(Load($"{_dir}/fmt.rank0.safetensors"), Load($"{_dir}/fmt.rank1.safetensors")));
    }

    [Fact]
    public void ResumeAfterBothRanksWereKilledIsExactAndAnotherWorldSizeIsRefused()
    {
        var full = Run(2, Limit, "mode=train", "steps=8", $"out={_dir}/full");
        Assert.Equal(0, full.ExitCode);
        var ckpt = Path.Combine(_dir, "ckpt");
        // both ranks SIGKILL themselves at step 5, after the checkpoint of step 3
        var killed = Run(2, Limit, "mode=train", "steps=8", $"ckpt={ckpt}", "ckptEvery=3", "killAt=5");
        Assert.NotEqual(0, killed.ExitCode);
        Assert.Equal(new[] { "step-000000003" }, Directory.GetDirectories(ckpt).Select(Path.GetFileName).ToArray());
        var resumed = Run(2, Limit, "mode=train", "steps=8", $"ckpt={ckpt}", "ckptEvery=3", "resume=1", $"out={_dir}/resumed");
        Assert.Equal(0, resumed.ExitCode);
        using var scope = torch.NewDisposeScope();
        var a = Load($"{_dir}/full.rank0.safetensors");
        Assert.True(BitEqual(a, Load($"{_dir}/resumed.rank0.safetensors")), "rank 0 differs from the uninterrupted run after resume");
        Assert.True(BitEqual(a, Load($"{_dir}/resumed.rank1.safetensors")), "rank 1 differs from the uninterrupted run after resume");

        var wrongSize = Run(1, Limit, "mode=train", "steps=8", $"ckpt={ckpt}", "resume=1");
        Assert.NotEqual(0, wrongSize.ExitCode);
        Assert.Contains("written by a run of 2 process(es); this run has 1", wrongSize.Output);
    }

    /// <summary>Bound for a peer failure to end the job: the 5 s collective timeout, plus process start and MPI teardown on a loaded 2-core machine.</summary>
    private static readonly TimeSpan FailureBound = TimeSpan.FromSeconds(60);

    [Fact]
    public void KillingOneRankEndsTheOtherWithAnError()
    {
        var r = Run(2, Limit, "mode=train", "steps=200", "killAt=3", "killRank=1", "timeout=5");
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Elapsed < FailureBound, $"the job took {r.Elapsed.TotalSeconds:F1} s to fail");
        Assert.DoesNotContain("done world=2", r.Output);
        Assert.Contains("killing myself at step 3", r.Output);
    }

    [Fact]
    public void AHangingRankAbortsTheJobWithAClearError()
    {
        var r = Run(2, Limit, "mode=train", "steps=200", "hangAt=3", "hangRank=1", "timeout=5");
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Elapsed < FailureBound, $"the job took {r.Elapsed.TotalSeconds:F1} s to fail");
        Assert.Contains("MPI_Allreduce did not complete within 5 s: a peer rank died or hangs", r.Output);
    }

    [Fact]
    public void WithoutMpiTheReasonIsExplained()
    {
        Assert.Null(MpiCommunicator.Probe(MpiCommunicator.DefaultLibrary)); // MPICH is installed where these tests run
        var reason = MpiCommunicator.Probe("libmpich-not-installed.so.99");
        Assert.NotNull(reason);
        Assert.Contains("apt-get install mpich", reason);
        Assert.Contains("Single-process training is unaffected", reason);
    }
}
