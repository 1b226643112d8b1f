using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

// Usage: MdtDist.Trellis.ElasticProbe AVAILABLE_GIB K B
// Builds a seeded ElasticSLatFlowModel (float32, 6 transformer blocks), registers a LinearMemoryController with the
// given budget and fit (target_ratio 1, no cap), runs a warm-up training step and then one measured step (forward,
// loss, backward, AdamW) inside the controller's record, and prints one JSON line: the ratio the controller chose,
// the blocks it checkpointed, the peak RSS of the measured step, the RSS before it, a hash of the gradients and the
// step's wall-clock time (forward + backward).
torch.set_num_threads(1);
double available = double.Parse(args[0], CultureInfo.InvariantCulture);
double k = double.Parse(args[1], CultureInfo.InvariantCulture);
double b = double.Parse(args[2], CultureInfo.InvariantCulture);

var config = JsonNode.Parse("""
    {"resolution": 32, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32, "num_blocks": 6,
     "num_heads": 2, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}
    """)!.AsObject();
var model = RandomTinyTrellis.Randomize(TrellisCheckpoint.Build<ElasticSLatFlowModel>(new TrellisModelConfig("ElasticSLatFlowModel", config)), 11);
model.train();
var meter = new ProcessPeakMemory();
var controller = new LinearMemoryController(new LinearMemoryControllerOptions
{
    AvailableMemoryGiB = available, TargetRatio = 1.0, MaxMemRatioStart = 1.0, Params = (k, b),
}, meter);
model.RegisterMemoryController(controller);
var optimizer = torch.optim.AdamW(model.parameters(), 1e-4);

// Two samples of 1024 distinct voxels each in a 32³ grid, a fixed target: the same batch every step.
var g = new Generator(5);
var rows = new List<Tensor>();
for (int s = 0; s < 2; s++)
{
    var cells = torch.randperm(32 * 32 * 32, generator: g)[..1024];
    rows.Add(torch.stack(new[] { torch.full(1024, s, ScalarType.Int64), cells / 1024, cells / 32 % 32, cells % 32 }, 1));
}
var coords = torch.cat(rows, 0).to(ScalarType.Int32);
var x = new SparseTensor(torch.randn(new long[] { 2048, 8 }, generator: g), coords);
var t = torch.rand(2, generator: g) * 1000;
var cond = torch.randn(new long[] { 2, 16, 32 }, generator: g);
var target = torch.randn(new long[] { 2048, 8 }, generator: g);

long before = 0;
for (int step = 0; step < 2; step++)
{
    using var scope = torch.NewDisposeScope();
    optimizer.zero_grad();
    GC.Collect();
    GC.WaitForPendingFinalizers();
    if (step == 1) before = CurrentRss();
    var watch = System.Diagnostics.Stopwatch.StartNew();
    using (controller.Record())
    {
        var y = model.forward(x, t, cond).Feats;
        var loss = (y - target).pow(2).mean();
        loss.backward();
        if (step == 1) Console.Error.WriteLine($"loss {loss.item<float>()}");
    }
    if (step == 1)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (_, p) in model.named_parameters())
            sha.AppendData(p.grad!.contiguous().bytes);
        var log = controller.LastLog!;
        int checkpointed = log.MemRatio == 1.0 ? 0 : (int)Math.Round((1 - log.MemRatio) * 6) + 1;
        Console.WriteLine(new JsonObject
        {
            ["mem_ratio"] = log.MemRatio, ["checkpointed"] = checkpointed, ["peak_bytes"] = (long)Math.Round(log.MemoryGiB * (1L << 30)),
            ["rss_before"] = before, ["grad_sha256"] = Convert.ToHexString(sha.GetHashAndReset()),
            ["step_seconds"] = watch.Elapsed.TotalSeconds,   // wall clock: for the docs only, never for a verdict
        }.ToJsonString());
    }
    optimizer.step();
}
return 0;

static long CurrentRss()
{
    foreach (var line in File.ReadLines("/proc/self/status"))
        if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            return long.Parse(line[6..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
    return 0;
}
