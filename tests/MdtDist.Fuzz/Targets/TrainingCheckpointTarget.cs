using System.Security.Cryptography;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Fuzz.Targets;

/// <summary>
/// <see cref="MdtDistiller.TryResume"/> on a checkpoint folder holding <c>step-000000001</c> and
/// <c>step-000000002</c>. Mutations hit the newest checkpoint mostly; some cases re-hash its manifest (so the
/// mutated content reaches the deeper readers), add a folder named <c>step-99999999999999999999</c>, or leave an
/// incomplete folder. Oracle: when a file listed in the newest manifest changed and the manifest was not updated, the
/// resume must fall back to step 1 (resuming step 2 is "silently accepted", an exception is a missed fallback).
/// </summary>
public sealed class TrainingCheckpointTarget : FuzzTarget
{
    private const string Newest = "ckpt/step-000000002/";
    private const string Older = "ckpt/step-000000001/";

    /// <inheritdoc />
    public override string Name => "training_checkpoint";

    /// <inheritdoc />
    public override string EntryPoint => "MdtDistiller.TryResume(folder)";

    /// <summary>A tiny distiller: analytic teacher, 2-16-2 MLP student, one EMA rate, clipping on.</summary>
    internal static MdtDistiller CreateDistiller(int keep = 5, string? checkpointDirectory = null, long checkpointEvery = 0)
    {
        var g = new Generator(5);
        var net = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2));
        using (torch.no_grad())
            foreach (var p in net.parameters()) p.copy_(torch.randn(p.shape, generator: g) * 0.3);
        var student = new FlowNetwork(net, (x, t, c) => net.forward(torch.cat(new[] { x.Data, t.to(x.Data.dtype).unsqueeze(1) }, 1)));
        var objective = MdtDistObjective.Create(new MdtDistSettings { DNorm = false, GuidanceVm = 0, GuidanceVd = 0 });
        return new MdtDistiller(GaussianMixtureFlow.Ring(), student, objective,
            new MdtDistillerOptions
            {
                LearningRate = 1e-3, Seed = 3, EmaRates = new[] { 0.9 }, LogEvery = 0, KeepCheckpoints = keep,
                CheckpointDirectory = checkpointDirectory, CheckpointEvery = checkpointEvery,
            });
    }

    /// <summary>The deterministic data of the tiny distiller: batch <paramref name="step"/> of 8 two-dimensional points.</summary>
    internal static DistillationBatch Batch(long step)
    {
        var gg = new Generator((ulong)(50 + step));
        return new DistillationBatch(Latent.Dense(torch.randn(new long[] { 8, 2 }, generator: gg)));
    }

    /// <inheritdoc />
    protected override IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-fuzz-seed-").FullName;
        try
        {
            using var d = CreateDistiller();
            var data = new DelegateDataSource(Batch);
            d.Train(data, 1);
            d.SaveCheckpoint(Path.Combine(dir, "ckpt"));
            d.Train(data, 2);
            d.SaveCheckpoint(Path.Combine(dir, "ckpt"));
            var files = Directory.GetFiles(dir, "*", SearchOption.AllDirectories)
                .ToDictionary(f => Path.GetRelativePath(dir, f).Replace(Path.DirectorySeparatorChar, '/'), File.ReadAllBytes);
            if (!files.ContainsKey(Newest + "manifest.json") || !files.ContainsKey(Older + "manifest.json"))
                throw new InvalidOperationException("seed checkpoints were not written as expected: " + string.Join(", ", files.Keys));
            return new[] { files };
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <inheritdoc />
    /// <remarks>A damaged file whose manifest was not updated must make the resume fall back (checked in
    /// <see cref="Read"/>), not fail; only a re-hashed invalid file in the newest checkpoint must be rejected.</remarks>
    protected override bool FormatOracleApplies(FuzzCase c, string file) => c.Flags.Contains("rehashed") && file.StartsWith(Newest, StringComparison.Ordinal);

    /// <inheritdoc />
    public override double Weight(string file) => file.StartsWith(Newest, StringComparison.Ordinal) ? (file.EndsWith("manifest.json", StringComparison.Ordinal) ? 4 : 2) : 0.3;

    /// <inheritdoc />
    protected override void AfterMutation(FuzzCase c, IReadOnlyDictionary<string, byte[]> seed, Random rng)
    {
        double u = rng.NextDouble();
        if (u < 0.25 && !c.Touched.Contains(Newest + "manifest.json"))
        {
            // Re-hash: a manifest consistent with the mutated files, so trainer.json, the safetensors files and the
            // optimizer state are parsed.
            var m = JsonNode.Parse(c.Files[Newest + "manifest.json"])!;
            foreach (var e in m["Files"]!.AsArray())
            {
                var name = e!["Name"]!.GetValue<string>();
                if (!c.Files.TryGetValue(Newest + name, out var b)) continue;
                e["Bytes"] = b.Length;
                e["Sha256"] = Convert.ToHexString(SHA256.HashData(b));
            }
            c.Files[Newest + "manifest.json"] = System.Text.Encoding.UTF8.GetBytes(m.ToJsonString());
            c.Flags.Add("rehashed");
            c.Mutations.Add("manifest re-hashed");
        }
        else if (u < 0.35)
        {
            foreach (var (k, v) in seed.Where(kv => kv.Key.StartsWith(Newest, StringComparison.Ordinal)).ToList())
                c.Files["ckpt/step-99999999999999999999/" + k[Newest.Length..]] = v;
            c.Mutations.Add("added step-99999999999999999999");
        }
        else if (u < 0.42)
        {
            // What a kill during pruning or writing leaves: a step folder with some files gone.
            foreach (var (k, v) in seed.Where(kv => kv.Key.StartsWith(Older, StringComparison.Ordinal)).Take(rng.Next(1, 4)))
                c.Files["ckpt/step-000000000/" + k[Older.Length..]] = v;
            c.Mutations.Add("added an incomplete step-000000000");
        }
    }

    /// <inheritdoc />
    public override void Read(string folder, FuzzCase c)
    {
        bool newestCorrupt = !c.Flags.Contains("rehashed") && !c.Touched.Contains(Newest + "manifest.json")
                             && c.Touched.Any(t => t.StartsWith(Newest, StringComparison.Ordinal));
        bool olderIntact = !c.Touched.Any(t => t.StartsWith(Older, StringComparison.Ordinal));
        using var d = CreateDistiller();
        bool resumed;
        try
        {
            resumed = d.TryResume(Path.Combine(folder, "ckpt"));
        }
        catch (Exception e) when (newestCorrupt && olderIntact && e is not OutOfMemoryException)
        {
            throw new FallbackMissedException($"the newest checkpoint is corrupt and step 1 is intact, but resume threw {e.GetType().Name}: {e.Message}", e);
        }
        if (newestCorrupt && resumed && d.Step == 2)
            throw new SilentlyAcceptedException($"resumed from step 2 although {string.Join(", ", c.Touched)} no longer match its manifest");
        if (newestCorrupt && olderIntact && (!resumed || d.Step != 1))
            throw new FallbackMissedException($"expected a fallback to step 1, got resumed={resumed}, step {d.Step}", null);
    }
}

/// <summary>A corrupt newest training checkpoint did not fall back to the previous valid one.</summary>
public sealed class FallbackMissedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public FallbackMissedException(string message, Exception? inner) : base(message, inner) { }
}
