using System.Diagnostics;
using System.Text.Json;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>The stages of a TRELLIS run, for progress reports.</summary>
public enum TrellisStage
{
    /// <summary>Stage 1: the sparse-structure flow (dense 16³ latent).</summary>
    SparseStructure,
    /// <summary>Decoding the structure latent to occupied voxels.</summary>
    StructureDecoding,
    /// <summary>Stage 2: the structured-latent flow on the occupied voxels.</summary>
    StructuredLatent,
    /// <summary>Decoding the structured latent (Gaussians).</summary>
    Decoding,
}

/// <summary>A progress report of <see cref="TrellisPipeline.Run"/>.</summary>
/// <param name="Stage">The stage.</param>
/// <param name="Step">Steps of that stage completed.</param>
/// <param name="TotalSteps">Steps of that stage.</param>
public sealed record TrellisProgress(TrellisStage Stage, int Step, int TotalSteps);

/// <summary>The per-channel normalisation of the structured latent (<c>slat_normalization</c> in <c>pipeline.json</c>).</summary>
/// <param name="Mean">Per-channel mean.</param>
/// <param name="Std">Per-channel standard deviation.</param>
public sealed record SLatNormalization(IReadOnlyList<double> Mean, IReadOnlyList<double> Std)
{
    /// <summary>TRELLIS-image-large's values.</summary>
    public static SLatNormalization TrellisImageLarge { get; } = new(
        new[] { -2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133, -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826 },
        new[] { 2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695, 2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338 });

    /// <summary>The identity normalisation for <paramref name="channels"/> channels.</summary>
    public static SLatNormalization Identity(int channels) => new(new double[channels], Enumerable.Repeat(1.0, channels).ToArray());

    /// <summary>Un-normalises feats <c>[N, C]</c>: feats·std + mean.</summary>
    /// <exception cref="ArgumentException">Channel count differs.</exception>
    public Tensor Denormalize(Tensor feats)
    {
        if (feats.dim() != 2 || feats.shape[1] != Mean.Count || Std.Count != Mean.Count)
            throw new ArgumentException($"slat_normalization has {Mean.Count} channels, the latent feats have shape [{string.Join(", ", feats.shape)}].", nameof(feats));
        using var scope = torch.NewDisposeScope();
        var m = torch.tensor(Mean.ToArray(), dtype: feats.dtype, device: feats.device);
        var s = torch.tensor(Std.ToArray(), dtype: feats.dtype, device: feats.device);
        return (feats * s + m).MoveToOuterDisposeScope();
    }
}

/// <summary>Options of one <see cref="TrellisPipeline.Run"/>.</summary>
public sealed class TrellisRunOptions
{
    /// <summary>Seed of the noise of both stages (drawn on the CPU, so a seed gives the same noise on any device).</summary>
    public long Seed { get; init; } = 42;

    /// <summary>Number of samples (a batch-1 condition is repeated; TRELLIS itself fails beyond 1).</summary>
    public int NumSamples { get; init; } = 1;

    /// <summary>Overrides the pipeline's stage-1 sampler for this run.</summary>
    public StageSampler? StructureSampler { get; init; }

    /// <summary>Overrides the pipeline's stage-2 sampler for this run.</summary>
    public StageSampler? LatentSampler { get; init; }

    /// <summary>Decode Gaussians when the pipeline has a Gaussian decoder (default true).</summary>
    public bool DecodeGaussians { get; init; } = true;

    /// <summary>Per-stage progress.</summary>
    public IProgress<TrellisProgress>? Progress { get; init; }

    /// <summary>Checked between steps and stages.</summary>
    public CancellationToken CancellationToken { get; init; }
}

/// <summary>One generated sample.</summary>
public sealed class TrellisSample
{
    internal TrellisSample(int index, Tensor coords, Tensor? latent, Gaussians? gaussians)
    {
        Index = index; Coords = coords; Latent = latent; Gaussians = gaussians;
    }

    /// <summary>Index of the sample in the batch.</summary>
    public int Index { get; }

    /// <summary>True when stage 1 found no occupied voxel: there is no latent and no Gaussians.</summary>
    public bool IsEmpty => Coords.shape[0] == 0;

    /// <summary>Occupied voxels of the 64³ grid, <c>[n, 3]</c> int32 (x, y, z) in TRELLIS's row order.</summary>
    public Tensor Coords { get; }

    /// <summary>The un-normalised structured latent feats <c>[n, 8]</c> (null when empty).</summary>
    public Tensor? Latent { get; }

    /// <summary>The decoded Gaussians (null when empty or not decoded).</summary>
    public Gaussians? Gaussians { get; }
}

/// <summary>The result of a <see cref="TrellisPipeline.Run"/>. Dispose it to free its tensors.</summary>
public sealed class TrellisOutput : IDisposable
{
    internal TrellisOutput(Tensor structureLatent, Tensor coords, IReadOnlyList<TrellisSample> samples, TimeSpan[] times, int ssEvals, int slatEvals)
    {
        StructureLatent = structureLatent; Coords = coords; Samples = samples;
        StructureTime = times[0]; DecodeStructureTime = times[1]; LatentTime = times[2]; DecodeTime = times[3];
        StructureEvaluations = ssEvals; LatentEvaluations = slatEvals;
    }

    /// <summary>The stage-1 latent <c>[B, 8, 16, 16, 16]</c>.</summary>
    public Tensor StructureLatent { get; }

    /// <summary>All occupied voxels, <c>[N, 4]</c> int32 (sample, x, y, z), as TRELLIS's pipeline makes them.</summary>
    public Tensor Coords { get; }

    /// <summary>The samples, in batch order.</summary>
    public IReadOnlyList<TrellisSample> Samples { get; }

    /// <summary>Wall time of the stage-1 flow.</summary>
    public TimeSpan StructureTime { get; }

    /// <summary>Wall time of the structure decoder.</summary>
    public TimeSpan DecodeStructureTime { get; }

    /// <summary>Wall time of the stage-2 flow.</summary>
    public TimeSpan LatentTime { get; }

    /// <summary>Wall time of the Gaussian decoder.</summary>
    public TimeSpan DecodeTime { get; }

    /// <summary>Stage-1 network evaluations (batched over samples).</summary>
    public int StructureEvaluations { get; }

    /// <summary>Stage-2 network evaluations (batched over samples).</summary>
    public int LatentEvaluations { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        StructureLatent.Dispose();
        Coords.Dispose();
        foreach (var s in Samples)
        {
            s.Coords.Dispose();
            s.Latent?.Dispose();
            s.Gaussians?.Dispose();
        }
    }
}

/// <summary>
/// TRELLIS's two-stage image-to-3D pipeline: condition tokens → stage-1 flow (sparse structure) → structure decoder →
/// occupied voxels → stage-2 flow (structured latent) on those voxels → un-normalise → Gaussian decoder. Each stage's
/// solver, steps and guidance are set independently, so a 25-step teacher and a 1–2 step MDT-dist student run through
/// the same code; either flow network can be replaced by a student (<see cref="WithStructureFlow"/>,
/// <see cref="WithLatentFlow"/>). Runs batches of several samples, seeds make runs reproducible, progress is reported
/// per stage and runs are cancellable. The condition (e.g. DINOv2 tokens <c>[1 or B, L, 1024]</c>) is given by the caller.
/// </summary>
public sealed class TrellisPipeline
{
    private readonly ILogger _logger;

    /// <summary>Assembles a pipeline from networks in memory.</summary>
    /// <exception cref="ArgumentException">The networks do not fit together (channels, condition widths).</exception>
    public TrellisPipeline(SparseStructureFlowModel structureFlow, SparseStructureDecoder structureDecoder, SLatFlowModel latentFlow,
        SLatGaussianDecoder? gaussianDecoder = null, SLatNormalization? normalization = null,
        StageSampler? structureSampler = null, StageSampler? latentSampler = null, ILogger? logger = null)
    {
        StructureFlow = structureFlow ?? throw new ArgumentNullException(nameof(structureFlow));
        StructureDecoder = structureDecoder ?? throw new ArgumentNullException(nameof(structureDecoder));
        LatentFlow = latentFlow ?? throw new ArgumentNullException(nameof(latentFlow));
        GaussianDecoder = gaussianDecoder;
        Normalization = normalization ?? SLatNormalization.TrellisImageLarge;
        StructureSampler = structureSampler ?? StageSampler.TrellisImageLarge;
        LatentSampler = latentSampler ?? StageSampler.TrellisImageLarge;
        _logger = logger ?? NullLogger.Instance;
        var ss = structureFlow.Config;
        if (structureDecoder.Config.LatentChannels != ss.OutChannels)
            throw new ArgumentException($"the structure decoder takes {structureDecoder.Config.LatentChannels} latent channels, the structure flow makes {ss.OutChannels}.", nameof(structureDecoder));
        if (latentFlow.Config.CondChannels != ss.CondChannels)
            throw new ArgumentException($"the two flows take condition tokens of different widths: {ss.CondChannels} (stage 1) and {latentFlow.Config.CondChannels} (stage 2).", nameof(latentFlow));
        if (Normalization.Mean.Count != latentFlow.Config.OutChannels)
            throw new ArgumentException($"slat_normalization has {Normalization.Mean.Count} channels, the stage-2 flow makes {latentFlow.Config.OutChannels}.", nameof(normalization));
    }

    /// <summary>The stage-1 flow network.</summary>
    public SparseStructureFlowModel StructureFlow { get; }

    /// <summary>The structure VAE decoder.</summary>
    public SparseStructureDecoder StructureDecoder { get; }

    /// <summary>The stage-2 flow network.</summary>
    public SLatFlowModel LatentFlow { get; }

    /// <summary>The Gaussian decoder, if loaded.</summary>
    public SLatGaussianDecoder? GaussianDecoder { get; }

    /// <summary>The structured-latent normalisation.</summary>
    public SLatNormalization Normalization { get; }

    /// <summary>The stage-1 sampler settings (defaults from <c>pipeline.json</c>).</summary>
    public StageSampler StructureSampler { get; init; }

    /// <summary>The stage-2 sampler settings (defaults from <c>pipeline.json</c>).</summary>
    public StageSampler LatentSampler { get; init; }

    /// <summary>Width of the condition tokens both flows take.</summary>
    public long ConditionChannels => StructureFlow.Config.CondChannels;

    /// <summary>The same pipeline with another stage-1 flow (e.g. a distilled student) and, optionally, its sampler.</summary>
    public TrellisPipeline WithStructureFlow(SparseStructureFlowModel flow, StageSampler? sampler = null) =>
        new(flow, StructureDecoder, LatentFlow, GaussianDecoder, Normalization, sampler ?? StructureSampler, LatentSampler, _logger);

    /// <summary>The same pipeline with another stage-2 flow (e.g. a distilled student) and, optionally, its sampler.</summary>
    public TrellisPipeline WithLatentFlow(SLatFlowModel flow, StageSampler? sampler = null) =>
        new(StructureFlow, StructureDecoder, flow, GaussianDecoder, Normalization, StructureSampler, sampler ?? LatentSampler, _logger);

    /// <summary>
    /// Loads a TRELLIS model folder: <c>pipeline.json</c> (its <c>models</c>, samplers and <c>slat_normalization</c>)
    /// and the <c>ckpts/NAME.json</c> + <c>ckpts/NAME.safetensors</c> it names. A model given as
    /// <c>owner/repo/ckpts/NAME</c> (TRELLIS-text's references into TRELLIS-image-large) is looked up in the folder, then
    /// in a sibling folder named after the repository.
    /// </summary>
    /// <exception cref="FileNotFoundException">pipeline.json or a checkpoint is missing (the message names the paths tried).</exception>
    /// <exception cref="InvalidDataException">pipeline.json is malformed.</exception>
    public static TrellisPipeline FromFolder(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null, ILogger? logger = null, bool loadGaussianDecoder = true)
    {
        var pj = Path.Combine(folder, "pipeline.json");
        if (!File.Exists(pj)) throw new FileNotFoundException($"'{folder}' is not a TRELLIS model folder: '{pj}' does not exist.", pj);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(pj)); }
        catch (JsonException e) { throw new InvalidDataException($"'{pj}' is not valid JSON: {e.Message}", e); }
        using var docScope = doc;
        var root = doc.RootElement;
        var args = root.TryGetProperty("args", out var a) ? a : root;
        if (!args.TryGetProperty("models", out var models) || models.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"'{pj}' has no \"models\" object.");
        string Model(string key)
        {
            if (!models.TryGetProperty(key, out var v) || v.GetString() is not { Length: > 0 } rel)
                throw new InvalidDataException($"'{pj}': models has no \"{key}\".");
            return ResolveModelPath(folder, rel);
        }
        var log = logger ?? NullLogger.Instance;
        var ssFlow = TrellisCheckpoint.Load<SparseStructureFlowModel>(Model("sparse_structure_flow_model"), dtype, device);
        var ssDec = TrellisCheckpoint.Load<SparseStructureDecoder>(Model("sparse_structure_decoder"), dtype, device);
        var slatFlow = TrellisCheckpoint.Load<SLatFlowModel>(Model("slat_flow_model"), dtype, device);
        SLatGaussianDecoder? gs = null;
        if (loadGaussianDecoder && models.TryGetProperty("slat_decoder_gs", out _))
            gs = TrellisCheckpoint.Load<SLatGaussianDecoder>(Model("slat_decoder_gs"), dtype, device);
        var ssSampler = args.TryGetProperty("sparse_structure_sampler", out var s1) ? StageSampler.FromPipelineJson(s1, pj) : StageSampler.TrellisImageLarge;
        var slatSampler = args.TryGetProperty("slat_sampler", out var s2) ? StageSampler.FromPipelineJson(s2, pj) : StageSampler.TrellisImageLarge;
        var norm = SLatNormalization.TrellisImageLarge;
        if (args.TryGetProperty("slat_normalization", out var n))
        {
            try { norm = new SLatNormalization(n.GetProperty("mean").EnumerateArray().Select(e => e.GetDouble()).ToArray(), n.GetProperty("std").EnumerateArray().Select(e => e.GetDouble()).ToArray()); }
            catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException)
            { throw new InvalidDataException($"'{pj}': malformed slat_normalization ({e.Message}).", e); }
        }
        log.LogInformation("Loaded TRELLIS pipeline from {Folder} ({DType}); stage 1: {S1}; stage 2: {S2}", folder, dtype, ssSampler, slatSampler);
        return new TrellisPipeline(ssFlow, ssDec, slatFlow, gs, norm, ssSampler, slatSampler, logger);
    }

    internal static string ResolveModelPath(string folder, string rel)
    {
        var local = Path.Combine(folder, rel);
        if (File.Exists(TrellisCheckpoint.ResolvePaths(local).Json)) return local;
        var parts = rel.Split('/', 3);
        if (parts.Length == 3)
        {
            var parent = Path.GetDirectoryName(Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar)) ?? folder;
            var sibling = Path.Combine(parent, parts[1], parts[2]);
            if (File.Exists(TrellisCheckpoint.ResolvePaths(sibling).Json)) return sibling;
            throw new FileNotFoundException($"checkpoint '{rel}' not found: tried '{local}.json' and '{sibling}.json'.", local + ".json");
        }
        throw new FileNotFoundException($"checkpoint '{rel}' not found: '{local}.json' does not exist.", local + ".json");
    }

    private sealed class StageProgress(IProgress<TrellisProgress>? target, TrellisStage stage) : IProgress<SamplerProgress>
    {
        public void Report(SamplerProgress value) => target?.Report(new TrellisProgress(stage, value.Step, value.TotalSteps));
    }

    /// <summary>Runs both stages and the decoder.</summary>
    /// <param name="condition">Condition tokens <c>[1 or NumSamples, L, C]</c>; the negative condition is zeros, as TRELLIS's image pipeline.</param>
    /// <param name="options">Seed, batch size, per-run sampler overrides, progress, cancellation.</param>
    /// <exception cref="ArgumentException">A condition of the wrong shape or width, or NumSamples &lt; 1.</exception>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public TrellisOutput Run(Tensor condition, TrellisRunOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(condition);
        options ??= new TrellisRunOptions();
        int b = options.NumSamples;
        if (b < 1) throw new ArgumentException($"NumSamples must be >= 1, got {b}.", nameof(options));
        if (condition.dim() != 3 || (condition.shape[0] != 1 && condition.shape[0] != b) || condition.shape[2] != ConditionChannels)
            throw new ArgumentException($"condition must be [1 or {b}, L, {ConditionChannels}], found [{string.Join(", ", condition.shape)}].", nameof(condition));
        var ct = options.CancellationToken;
        var ssSampler = options.StructureSampler ?? StructureSampler;
        var slatSampler = options.LatentSampler ?? LatentSampler;
        var times = new TimeSpan[4];
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var device = StructureFlow.Device;
        var gen = new Generator((ulong)options.Seed);
        var cond = condition.shape[0] == b ? condition : condition.expand(b, -1, -1);

        // Stage 1: the sparse structure.
        var sw = Stopwatch.StartNew();
        var ssModel = new SparseStructureFlowAdapter(StructureFlow);
        var ssNoise = torch.randn(ssModel.LatentShape(b), dtype: ScalarType.Float32, generator: gen).to(StructureFlow.DType, device);
        using var ssResult = ssSampler.CreateSolver().Sample(ssSampler.Guide(ssModel), Latent.Dense(ssNoise), cond, ssSampler.Grid(),
            new SamplerOptions { Progress = new StageProgress(options.Progress, TrellisStage.SparseStructure), CancellationToken = ct });
        var z = ssResult.Samples;
        times[0] = sw.Elapsed;
        ct.ThrowIfCancellationRequested();

        sw.Restart();
        var coords = StructureDecoder.DecodeOccupancy(z.to(StructureDecoder.DType)).to(ScalarType.Int32);
        times[1] = sw.Elapsed;
        options.Progress?.Report(new TrellisProgress(TrellisStage.StructureDecoding, 1, 1));
        var batchCol = coords[.., 0].to(ScalarType.Int64).cpu();
        var counts = torch.bincount(batchCol, minlength: b).data<long>().ToArray();
        var nonEmpty = Enumerable.Range(0, b).Where(i => counts[i] > 0).ToArray();
        _logger.LogInformation("TRELLIS stage 1: {Steps} steps, {Evals} evaluations, {Ms:F0} ms; voxels per sample: {Counts}",
            ssResult.TimeGrid.Count - 1, ssResult.Evaluations, times[0].TotalMilliseconds, string.Join(", ", counts));
        foreach (var i in Enumerable.Range(0, b).Where(i => counts[i] == 0))
            _logger.LogWarning("TRELLIS sample {Index}: the sparse structure has no occupied voxel; it is returned empty.", i);

        // Stage 2: the structured latent on the occupied voxels of the non-empty samples.
        var perSample = new Tensor?[b];
        var gaussians = new Gaussians?[b];
        int slatEvals = 0;
        if (nonEmpty.Length > 0)
        {
            ct.ThrowIfCancellationRequested();
            sw.Restart();
            var remap = torch.full(new long[] { b }, -1L, dtype: ScalarType.Int64);
            for (int k = 0; k < nonEmpty.Length; k++) remap[nonEmpty[k]] = k;
            var compact = coords.to(ScalarType.Int64).cpu().clone();
            compact[.., 0] = remap.index_select(0, batchCol);
            var slatDevice = ModuleInfo.DeviceOf(LatentFlow);
            var st = new SparseTensor(
                torch.randn(new[] { compact.shape[0], (long)LatentFlow.Config.InChannels }, dtype: ScalarType.Float32, generator: gen).to(ModuleInfo.DTypeOf(LatentFlow), slatDevice),
                compact.to(ScalarType.Int32).to(slatDevice), (int)LatentFlow.Config.Resolution, nonEmpty.Length);
            var slatCond = cond.index_select(0, torch.tensor(nonEmpty.Select(i => (long)i).ToArray(), device: cond.device));
            using var slatResult = slatSampler.CreateSolver().Sample(slatSampler.Guide(new SLatFlowAdapter(LatentFlow)), st.ToLatent(), slatCond, slatSampler.Grid(),
                new SamplerOptions { Progress = new StageProgress(options.Progress, TrellisStage.StructuredLatent), CancellationToken = ct });
            slatEvals = slatResult.Evaluations;
            var feats = Normalization.Denormalize(slatResult.Samples);
            times[2] = sw.Elapsed;
            _logger.LogInformation("TRELLIS stage 2: {Steps} steps, {Evals} evaluations, {Ms:F0} ms on {N} voxels",
                slatResult.TimeGrid.Count - 1, slatEvals, times[2].TotalMilliseconds, compact.shape[0]);
            var slat = st.ReplaceFeats(feats);
            for (int k = 0; k < nonEmpty.Length; k++)
            {
                var (start, len) = slat.RowRanges[k];
                perSample[nonEmpty[k]] = feats.narrow(0, start, len).clone().DetachFromDisposeScope();
            }
            ct.ThrowIfCancellationRequested();
            if (options.DecodeGaussians && GaussianDecoder is not null)
            {
                sw.Restart();
                var decoded = GaussianDecoder.forward(slat.ReplaceFeats(feats.to(ModuleInfo.DTypeOf(GaussianDecoder))));
                for (int k = 0; k < nonEmpty.Length; k++) gaussians[nonEmpty[k]] = decoded[k];
                times[3] = sw.Elapsed;
                options.Progress?.Report(new TrellisProgress(TrellisStage.Decoding, 1, 1));
            }
        }

        var samples = new List<TrellisSample>();
        long offset = 0;
        for (int i = 0; i < b; i++)
        {
            var c = coords.narrow(0, offset, counts[i])[.., 1..].clone().DetachFromDisposeScope();
            offset += counts[i];
            samples.Add(new TrellisSample(i, c, perSample[i], gaussians[i]));
        }
        return new TrellisOutput(z.clone().DetachFromDisposeScope(), coords.DetachFromDisposeScope(), samples, times, ssResult.Evaluations, slatEvals);
    }
}

/// <summary>dtype/device of a module's parameters.</summary>
internal static class ModuleInfo
{
    public static ScalarType DTypeOf(nn.Module m) => m.parameters().FirstOrDefault()?.dtype ?? ScalarType.Float32;
    public static Device DeviceOf(nn.Module m) => m.parameters().FirstOrDefault()?.device ?? CPU;
}
