// Worker for the data-parallel tests and the 1-vs-2-rank measurement: a tiny MDT-dist distillation of a 2-D MLP
// teacher, run under `mpiexec.mpich -n N dotnet MdtDist.Distributed.Worker.dll key=value ...` (or without MPI for
// the single-process reference). Written as a user would write a data-parallel run.
using System.Diagnostics;
using System.Globalization;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.IO;
using MdtDist.Core.Training;
using MdtDist.Core.Training.Parallel;
using MdtDist.Distributed;
using TorchSharp;
using static TorchSharp.torch;

var arg = args.Select(a => a.Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1]);
string Get(string k, string d) => arg.TryGetValue(k, out var v) ? v : d;
long L(string k, long d) => long.Parse(Get(k, d.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
string mode = Get("mode", "train");          // train | pinned (MPI) | single-pinned | single-train (one process, no MPI)
long steps = L("steps", 6);
int hidden = (int)L("hidden", 16), layers = (int)L("layers", 2);
long globalBatch = L("batch", 8);
int threads = (int)L("threads", 1);
string? outPrefix = arg.GetValueOrDefault("out");
torch.set_num_threads(threads);

ITrainingCommunicator? comm = null;
MpiCommunicator? mpi = null;
if (!mode.StartsWith("single", StringComparison.Ordinal))
{
    mpi = MpiCommunicator.TryInitialize(out var reason, TimeSpan.FromSeconds(L("timeout", 300)));
    if (mpi is null) { Console.Error.WriteLine(reason); return 2; }
    comm = mpi;
}
int rank = comm?.Rank ?? 0, world = comm?.WorldSize ?? 1;

// Data: the global batch of step s is a deterministic function of s (two Gaussian blobs); each rank takes its shard.
var globalData = new DelegateDataSource(step =>
{
    using var g = new Generator((ulong)(1000 + step));
    var centers = torch.tensor(new float[] { 1.5f, 1.5f, -1.5f, -1.5f }).reshape(2, 2);
    var idx = torch.randint(0, 2, new[] { globalBatch }, generator: g);
    return new DistillationBatch(Latent.Dense(centers.index_select(0, idx) + 0.2f * torch.randn(new[] { globalBatch, 2L }, generator: g)));
});
var killAt = L("killAt", -1);
var killRank = L("killRank", -1);
var hangAt = L("hangAt", -1);
var hangRank = L("hangRank", -1);
IDistillationDataSource data = new DelegateDataSource(step =>
{
    if (step == killAt && (killRank < 0 || killRank == rank)) { Console.Error.WriteLine($"[rank {rank}] killing myself at step {step}"); Process.GetCurrentProcess().Kill(); }
    if (step == hangAt && (hangRank < 0 || hangRank == rank)) { Console.Error.WriteLine($"[rank {rank}] hanging at step {step}"); Thread.Sleep(Timeout.Infinite); }
    return world == 1 ? globalData.GetBatch(step) : new ShardedDataSource(globalData, rank, world).GetBatch(step);
});

var teacher = Mlp.Create(hidden, layers, seed: 7);
bool fm = Get("trainer", "mdt") == "fm";   // mdt: MdtDistiller; fm: FlowMatchingTrainer (the same training loop)
var objective = MdtDistObjective.Create(new MdtDistSettings { DNorm = false, GuidanceVm = 0, GuidanceVd = 0 });
var clipping = new GradientClipping(MaxNorm: 1.0, Percentile: 90, BufferSize: 3);
var ckptDir = arg.GetValueOrDefault("ckpt");
var options = new MdtDistillerOptions
{
    LearningRate = 1e-3, Seed = 42, EmaRates = new[] { 0.9 }, Clipping = clipping,
    BatchSplit = (int)L("split", 1), LogEvery = 0, Communicator = comm, CheckpointDirectory = ckptDir, CheckpointEvery = L("ckptEvery", 0),
};
// every rank builds its network from its own (here: differently seeded) weights: the trainer broadcasts rank 0's
using var distiller = fm ? null : MdtDistiller.FromTeacher(teacher, () => Mlp.Create(hidden, layers, seed: (ulong)(99 + rank)), objective, options);
var fmModel = fm ? Mlp.Create(hidden, layers, seed: (ulong)(99 + rank)) : null;
using var fmTrainer = fm
    ? new FlowMatchingTrainer(fmModel!, new FlowMatchingTrainerOptions
    {
        LearningRate = 1e-3, Seed = 42, EmaRates = new[] { 0.9 }, Clipping = clipping, PUncond = 0,
        BatchSplit = (int)L("split", 1), LogEvery = 0, Communicator = comm, CheckpointDirectory = ckptDir, CheckpointEvery = L("ckptEvery", 0),
    })
    : null;
IFlowNetwork trained = fm ? fmModel! : distiller!.Student;
long Step() => fm ? fmTrainer!.Step : distiller!.Step;
double Reduce() => fm ? fmTrainer!.AllReduceSeconds : distiller!.AllReduceSeconds;
if (arg.ContainsKey("resume") && !(fm ? fmTrainer!.TryResume() : distiller!.TryResume())) { Console.Error.WriteLine("no checkpoint to resume from"); return 4; }

var watch = Stopwatch.StartNew();
double stepSeconds = 0, reduceAtWarmup = 0;
long timed = 0;
if (mode is "pinned" or "single-pinned")
{
    // Pinned draws per global sample (as a reference would pin them), so that N ranks and one process can be compared.
    for (long s = Step(); s < steps; s++)
    {
        var batch = globalData.GetBatch(s);
        using var g = new Generator((ulong)(5000 + s));
        var noise = torch.randn(new[] { globalBatch, 2L }, generator: g);
        var tRaw = torch.randn(new[] { globalBatch }, generator: g);
        var noiseFake = torch.randn(new[] { globalBatch, 2L }, generator: g);
        var parts = batch.Split(world == 1 ? (int)L("parts", 1) : world);
        var offsets = parts.Select((p, i) => parts.Take(i).Sum(q => q.BatchSize)).ToList();
        var mine = world == 1 ? Enumerable.Range(0, parts.Count).ToList() : new List<int> { rank };
        bool skipped;
        if (fm)
            skipped = fmTrainer!.TrainStep(mine.Select(i => parts[i]).ToList(),
                mine.Select(i => new FlowMatchingDraws(noise.narrow(0, offsets[i], parts[i].BatchSize), tRaw.narrow(0, offsets[i], parts[i].BatchSize), null)).ToList()).Skipped;
        else
            skipped = distiller!.TrainStep(mine.Select(i => parts[i]).ToList(), mine.Select(i => new MdtDistDraws(noise.narrow(0, offsets[i], parts[i].BatchSize),
                tRaw.narrow(0, offsets[i], parts[i].BatchSize), noiseFake.narrow(0, offsets[i], parts[i].BatchSize))).ToList()).Skipped;
        if (skipped) throw new InvalidOperationException($"step {s} skipped");
    }
}
else
{
    void Timing(long step, TimeSpan elapsed)
    {
        if (step == 2) reduceAtWarmup = Reduce();
        if (step > 2) { stepSeconds += elapsed.TotalSeconds; timed++; }
    }
    if (fm) fmTrainer!.Train(data, steps, new SyncProgress<TrainingProgress>(p => Timing(p.Step, p.Elapsed)));
    else distiller!.Train(data, steps, new SyncProgress<DistillationProgress>(p => Timing(p.Step, p.Elapsed)));
}
var masters = fm ? fmTrainer!.MasterParameters : distiller!.MasterParameters;
var ema = fm ? fmTrainer!.EmaParameters(0) : distiller!.EmaParameters(0);

double pureReduceMs = 0;
if (comm is { WorldSize: > 1 })
{
    // the all-reduce alone on a buffer of the gradient's size, after a barrier: transfer cost without waiting for a slower rank
    long n = masters.Sum(p => p.numel());
    using var buf = torch.ones(n);
    for (int i = 0; i < 22; i++)
    {
        comm.Barrier();
        var t0 = Stopwatch.GetTimestamp();
        comm.AllReduceSum(buf);
        if (i >= 2) pureReduceMs += Stopwatch.GetElapsedTime(t0).TotalMilliseconds / 20;
    }
}

if (outPrefix is not null)
{
    var sd = trained.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
    foreach (var kv in ema) sd["ema." + kv.Key] = kv.Value;
    SafeTensors.Save($"{outPrefix}.rank{rank}.safetensors", sd);
}
if (rank == 0)
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"done world={world} trainer={(fm ? "fm" : "mdt")} step={Step()} total_s={watch.Elapsed.TotalSeconds:F3} step_ms={(timed > 0 ? 1000 * stepSeconds / timed : 0):F3} allreduce_ms={(timed > 0 ? 1000 * (Reduce() - reduceAtWarmup) / timed : 0):F3} allreduce_share={(stepSeconds > 0 ? 100 * (Reduce() - reduceAtWarmup) / stepSeconds : 0):F1}% params={masters.Sum(p => p.numel())} pure_allreduce_ms={pureReduceMs:F3}"));
mpi?.Dispose();
return 0;

internal sealed class SyncProgress<T>(Action<T> a) : IProgress<T>
{
    public void Report(T value) => a(value);
}

internal static class Mlp
{
    public static IFlowNetwork Create(int hidden, int layers, ulong seed)
    {
        var mods = new List<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < layers; i++) { mods.Add(nn.Linear(i == 0 ? 3 : hidden, hidden)); mods.Add(nn.SiLU()); }
        mods.Add(nn.Linear(hidden, 2));
        var net = nn.Sequential(mods.ToArray());
        using var g = new Generator(seed);
        using (torch.no_grad())
            foreach (var p in net.parameters())
                p.copy_(torch.randn(p.shape, generator: g) * (p.dim() == 2 ? Math.Sqrt(1.0 / p.shape[1]) : 0.05));
        return new FlowNetwork(net, (x, t, c) => net.forward(torch.cat(new[] { x.Data, t.to(x.Data.dtype).unsqueeze(1) }, 1)));
    }
}
