using System.Diagnostics;
using System.Text.Json;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>
/// TRELLIS's two-stage image-to-3D pipeline: condition tokens → stage-1 flow (sparse structure) → structure decoder →
/// occupied voxels → stage-2 flow (structured latent) on those voxels → un-normalise → Gaussian and/or mesh decoder
/// (FlexiCubes). Each stage's
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
        StageSampler? structureSampler = null, StageSampler? latentSampler = null, ILogger? logger = null, SLatMeshDecoder? meshDecoder = null)
    {
        StructureFlow = structureFlow ?? throw new ArgumentNullException(nameof(structureFlow));
        StructureDecoder = structureDecoder ?? throw new ArgumentNullException(nameof(structureDecoder));
        LatentFlow = latentFlow ?? throw new ArgumentNullException(nameof(latentFlow));
        GaussianDecoder = gaussianDecoder;
        MeshDecoder = meshDecoder;
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

    /// <summary>The mesh decoder (FlexiCubes features), if loaded.</summary>
    public SLatMeshDecoder? MeshDecoder { get; }

    /// <summary>The structured-latent normalisation.</summary>
    public SLatNormalization Normalization { get; }

    /// <summary>The stage-1 sampler settings (defaults from <c>pipeline.json</c>).</summary>
    /// <exception cref="ArgumentException">Invalid settings (see <see cref="StageSampler.Validate"/>).</exception>
    public StageSampler StructureSampler { get => _structureSampler; init => _structureSampler = Checked(value); }

    /// <summary>The stage-2 sampler settings (defaults from <c>pipeline.json</c>).</summary>
    /// <exception cref="ArgumentException">Invalid settings (see <see cref="StageSampler.Validate"/>).</exception>
    public StageSampler LatentSampler { get => _latentSampler; init => _latentSampler = Checked(value); }

    private readonly StageSampler _structureSampler = StageSampler.TrellisImageLarge;
    private readonly StageSampler _latentSampler = StageSampler.TrellisImageLarge;

    private static StageSampler Checked(StageSampler sampler)
    {
        ArgumentNullException.ThrowIfNull(sampler);
        sampler.Validate();
        return sampler;
    }

    /// <summary>Width of the condition tokens both flows take.</summary>
    public long ConditionChannels => StructureFlow.Config.CondChannels;

    /// <summary>The same pipeline with another stage-1 flow (e.g. a distilled student) and, optionally, its sampler.</summary>
    public TrellisPipeline WithStructureFlow(SparseStructureFlowModel flow, StageSampler? sampler = null) =>
        new(flow, StructureDecoder, LatentFlow, GaussianDecoder, Normalization, sampler ?? StructureSampler, LatentSampler, _logger, MeshDecoder);

    /// <summary>The same pipeline with another stage-2 flow (e.g. a distilled student) and, optionally, its sampler.</summary>
    public TrellisPipeline WithLatentFlow(SLatFlowModel flow, StageSampler? sampler = null) =>
        new(StructureFlow, StructureDecoder, flow, GaussianDecoder, Normalization, StructureSampler, sampler ?? LatentSampler, _logger, MeshDecoder);

    /// <summary>
    /// Loads a TRELLIS model folder: <c>pipeline.json</c> (its <c>models</c>, samplers and <c>slat_normalization</c>)
    /// and the <c>ckpts/NAME.json</c> + <c>ckpts/NAME.safetensors</c> it names. A model given as
    /// <c>owner/repo/ckpts/NAME</c> (TRELLIS-text's references into TRELLIS-image-large) is looked up in the folder, then
    /// in a sibling folder named after the repository. The Gaussian and mesh decoders are loaded when <c>pipeline.json</c>
    /// names them (<c>slat_decoder_gs</c>, <c>slat_decoder_mesh</c>) and the corresponding flag is set.
    /// </summary>
    /// <exception cref="FileNotFoundException">pipeline.json or a checkpoint is missing (the message names the paths tried).</exception>
    /// <exception cref="InvalidDataException">pipeline.json is malformed or holds invalid values (checked before any network is
    /// built; see <see cref="TrellisPipelineConfig.Read"/>), or a checkpoint is corrupt.</exception>
    public static TrellisPipeline FromFolder(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null, ILogger? logger = null, bool loadGaussianDecoder = true,
        bool loadMeshDecoder = true)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var pj = Path.Combine(folder, "pipeline.json");
        if (!File.Exists(pj)) throw new FileNotFoundException($"'{folder}' is not a TRELLIS model folder: '{pj}' does not exist.", pj);
        var config = TrellisPipelineConfig.Read(pj);
        string Model(string key) => ResolveModelPath(folder, config.Models[key]);
        var log = logger ?? NullLogger.Instance;
        WarnIfSlowOnCpu(log, dtype, device, CpuFeatures.CpuFlags);
        var ssFlow = TrellisCheckpoint.Load<SparseStructureFlowModel>(Model("sparse_structure_flow_model"), dtype, device);
        var ssDec = TrellisCheckpoint.Load<SparseStructureDecoder>(Model("sparse_structure_decoder"), dtype, device);
        var slatFlow = TrellisCheckpoint.Load<SLatFlowModel>(Model("slat_flow_model"), dtype, device);
        SLatGaussianDecoder? gs = null;
        if (loadGaussianDecoder && config.Models.ContainsKey("slat_decoder_gs"))
            gs = TrellisCheckpoint.Load<SLatGaussianDecoder>(Model("slat_decoder_gs"), dtype, device);
        SLatMeshDecoder? mesh = null;
        if (loadMeshDecoder && config.Models.ContainsKey("slat_decoder_mesh"))
            mesh = TrellisCheckpoint.Load<SLatMeshDecoder>(Model("slat_decoder_mesh"), dtype, device);
        log.LogInformation("Loaded TRELLIS pipeline from {Folder} ({DType}); stage 1: {S1}; stage 2: {S2}", folder, dtype, config.StructureSampler, config.LatentSampler);
        try
        {
            return new TrellisPipeline(ssFlow, ssDec, slatFlow, gs, config.Normalization, config.StructureSampler, config.LatentSampler, logger, mesh);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"'{pj}': the models it names do not fit together: {e.Message}", e);
        }
    }

    /// <summary>Logs a warning when the networks are to run on the CPU in a 16-bit dtype it has no native arithmetic for
    /// (<see cref="CpuFeatures.ReducedPrecisionWarning"/>): such a run works but is slower than float32, never silently.</summary>
    internal static void WarnIfSlowOnCpu(ILogger logger, ScalarType dtype, Device? device, IReadOnlySet<string> cpuFlags)
    {
        if ((device ?? torch.CPU).type != DeviceType.CPU) return;
        if (CpuFeatures.ReducedPrecisionWarning(dtype, cpuFlags) is { } why)
            logger.LogWarning("TRELLIS pipeline in {DType} on the CPU: {Why}", dtype, why);
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

    // ------------------------------------------------------------------------------------------------------------
    // The run, as a list of stage calls (TRELLIS's TrellisImageTo3DPipeline.run).
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>Runs both stages and the decoders on condition tokens with TRELLIS's image convention (negative = zeros).</summary>
    /// <param name="condition">Condition tokens <c>[1 or NumSamples, L, C]</c>.</param>
    /// <param name="options">Seed or given noises, batch size, per-run sampler overrides, formats, progress, cancellation.</param>
    /// <exception cref="ArgumentException">A condition of the wrong shape or width, NumSamples &lt; 1, or given noise of the wrong shape.</exception>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public TrellisOutput Run(Tensor condition, TrellisRunOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(condition);
        if (condition.dim() != 3)
            throw new ArgumentException($"condition must be [1 or B, L, {ConditionChannels}], found [{string.Join(", ", condition.shape)}].", nameof(condition));
        using var scope = torch.NewDisposeScope();
        return Run(TrellisCondition.FromImageFeatures(condition), options);
    }

    /// <summary>Encodes <paramref name="input"/> with <paramref name="conditioner"/> (the "encode condition" stage), then runs
    /// <see cref="Run(TrellisCondition, TrellisRunOptions?)"/>.</summary>
    /// <exception cref="ArgumentException">See <see cref="Run(TrellisCondition, TrellisRunOptions?)"/>.</exception>
    public TrellisOutput Run<TInput>(ITrellisConditioner<TInput> conditioner, TInput input, TrellisRunOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(conditioner);
        using var scope = torch.NewDisposeScope();
        return Run(conditioner.Encode(input), options);
    }

    /// <summary>
    /// Runs the stages in TRELLIS's order: <see cref="SampleSparseStructure"/> → <see cref="DecodeOccupancy"/> →
    /// <see cref="SampleStructuredLatent"/> (on the samples that have voxels) → <see cref="Decode"/>. With a seed, one
    /// generator draws the stage-1 noise, then the stage-2 noise.
    /// </summary>
    /// <param name="condition">Condition <c>[1 or NumSamples, L, C]</c> and negative tokens.</param>
    /// <param name="options">Seed or given noises, batch size, per-run sampler overrides, formats, progress, cancellation.</param>
    /// <exception cref="ArgumentException">A condition of the wrong shape or width, NumSamples &lt; 1, or given noise of the wrong shape.</exception>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public TrellisOutput Run(TrellisCondition condition, TrellisRunOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(condition);
        options ??= new TrellisRunOptions();
        int b = options.NumSamples;
        if (b < 1) throw new ArgumentException($"NumSamples must be >= 1, got {b}.", nameof(options));
        CheckCondition(condition, b, nameof(condition), options.MultiImage);
        if (options.StructureSampler is { } s1) Checked(s1);
        if (options.LatentSampler is { } s2) Checked(s2);
        var ct = options.CancellationToken;
        var times = new TimeSpan[4];
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var gen = new Generator((ulong)options.Seed);

        var structure = SampleSparseStructure(condition, b, Stage(options, options.StructureSampler,
            options.StructureNoise ?? DrawNoise(StructureNoiseShape(b), gen)));
        var z = structure.Result;
        times[0] = structure.Elapsed;
        ct.ThrowIfCancellationRequested();

        var sw = Stopwatch.StartNew();
        var coords = DecodeOccupancy(z);
        times[1] = sw.Elapsed;
        options.Progress?.Report(new TrellisProgress(TrellisStage.StructureDecoding, 1, 1));
        var (compact, nonEmpty, counts) = NonEmptySamples(coords, b);
        _logger.LogInformation("TRELLIS stage 1: {Evals} evaluations, {Ms:F0} ms; voxels per sample: {Counts}",
            structure.Evaluations, times[0].TotalMilliseconds, string.Join(", ", counts));
        foreach (var i in Enumerable.Range(0, b).Where(i => counts[i] == 0))
            _logger.LogWarning("TRELLIS sample {Index}: the sparse structure has no occupied voxel; it is returned empty.", i);

        SparseTensor? slat = null;
        TrellisDecoded? decoded = null;
        int slatEvals = 0;
        if (nonEmpty.Length > 0)
        {
            ct.ThrowIfCancellationRequested();
            ReleaseFreedHeap();
            var latent = SampleStructuredLatent(options.MultiImage is null ? condition.Select(nonEmpty) : condition, compact, Stage(options, options.LatentSampler,
                options.LatentNoise ?? DrawNoise(new[] { compact.shape[0], (long)LatentFlow.Config.InChannels }, gen)));
            slat = latent.Result;
            slatEvals = latent.Evaluations;
            times[2] = latent.Elapsed;
            _logger.LogInformation("TRELLIS stage 2: {Evals} evaluations, {Ms:F0} ms on {N} voxels", slatEvals, times[2].TotalMilliseconds, compact.shape[0]);
            ct.ThrowIfCancellationRequested();

            var formats = options.Formats & AvailableFormats;
            if (formats != TrellisFormats.None)
            {
                sw.Restart();
                ReleaseFreedHeap();
                decoded = Decode(slat, formats);
                times[3] = sw.Elapsed;
                options.Progress?.Report(new TrellisProgress(TrellisStage.Decoding, 1, 1));
            }
        }
        return Assemble(z, coords, counts, nonEmpty, slat, decoded, times, structure.Evaluations, slatEvals);
    }

    /// <summary>
    /// On the CPU, hands the C heap that earlier stages freed back to the kernel (<see cref="NativeHeap.Trim"/>) so that
    /// the next stage's allocations do not come on top of it: on the full-size pipeline the peak went from 9.2 to 7.5 GB
    /// (docs/trellis-cpu.md).
    /// </summary>
    private void ReleaseFreedHeap()
    {
        if (ModuleInfo.DeviceOf(LatentFlow).type == DeviceType.CPU) NativeHeap.Trim();
    }

    // ------------------------------------------------------------------------------------------------------------
    // The stages, each usable alone.
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>The shape of the stage-1 noise for <paramref name="numSamples"/> samples: <c>[B, C, R, R, R]</c>.</summary>
    public long[] StructureNoiseShape(int numSamples) => new SparseStructureFlowAdapter(StructureFlow).LatentShape(numSamples);

    /// <summary>
    /// Stage 1 (TRELLIS's <c>sample_sparse_structure</c> up to the decoder): solves the sparse-structure flow from noise
    /// <c>[B, C, R, R, R]</c> to the structure latent z, with this stage's sampler (guidance against
    /// <see cref="TrellisCondition.NegCond"/>).
    /// </summary>
    /// <param name="condition">Condition <c>[1 or B, L, C]</c> and negative tokens.</param>
    /// <param name="numSamples">B.</param>
    /// <param name="options">Sampler override, seed or given noise, progress, cancellation.</param>
    /// <returns>z <c>[B, C, R, R, R]</c> in the network's dtype and on its device (the caller disposes it).</returns>
    /// <exception cref="ArgumentException">A condition of the wrong shape or width, B &lt; 1, or given noise of another shape.</exception>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public TrellisStageResult<Tensor> SampleSparseStructure(TrellisCondition condition, int numSamples = 1, TrellisStageOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(condition);
        if (numSamples < 1) throw new ArgumentException($"numSamples must be >= 1, got {numSamples}.", nameof(numSamples));
        options ??= new TrellisStageOptions();
        CheckCondition(condition, numSamples, nameof(condition), options.MultiImage);
        var sampler = Checked(options.Sampler ?? StructureSampler);
        var sw = Stopwatch.StartNew();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var model = new SparseStructureFlowAdapter(StructureFlow);
        var noise = StageNoise(options, model.LatentShape(numSamples), StructureFlow.DType, StructureFlow.Device, "stage-1");
        using var kv = KvCacheSession.Begin();   // no weight changes during the run: each layer projects the condition once
        var stageCondition = condition.As(StructureFlow.DType);   // cast once, not by the adapter on every step (the flow keeps its torso cast)
        using var result = sampler.CreateSolver().Sample(Guided(sampler, model, stageCondition, options.MultiImage), Latent.Dense(noise), stageCondition.Cond, sampler.Grid(),
            new SamplerOptions { Progress = new StageProgress(options.Progress, TrellisStage.SparseStructure), CancellationToken = options.CancellationToken });
        return new TrellisStageResult<Tensor>(result.Samples, result.Evaluations, sw.Elapsed);
    }

    /// <summary>
    /// Decodes a structure latent to its occupied voxels as TRELLIS does: <c>argwhere(decoder(z) &gt; 0)[:, [0, 2, 3, 4]]</c>.
    /// </summary>
    /// <param name="structureLatent">z <c>[B, C, R, R, R]</c>.</param>
    /// <returns>int32 <c>[N, 4]</c> rows (sample, x, y, z) in row-major order (the caller disposes it).</returns>
    public Tensor DecodeOccupancy(Tensor structureLatent)
    {
        ArgumentNullException.ThrowIfNull(structureLatent);
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        return StructureDecoder.DecodeOccupancy(structureLatent.to(StructureDecoder.DType)).to(ScalarType.Int32).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Stage 2 (TRELLIS's <c>sample_slat</c>): solves the structured-latent flow from noise <c>[N, C]</c> on the voxels
    /// <paramref name="coords"/>, then un-normalises with <see cref="Normalization"/> (<c>slat · std + mean</c>).
    /// </summary>
    /// <param name="condition">Condition <c>[1 or B, L, C]</c> and negative tokens, B = the samples in <paramref name="coords"/>.</param>
    /// <param name="coords">Occupied voxels <c>[N, 4]</c> (sample, x, y, z), rows contiguous per sample, every sample 0..B−1
    /// present (<see cref="DecodeOccupancy"/> of non-empty structures).</param>
    /// <param name="options">Sampler override, seed or given noise (<c>[N, C]</c>), progress, cancellation.</param>
    /// <returns>The un-normalised structured latent on <paramref name="coords"/> (the caller disposes its feats).</returns>
    /// <exception cref="ArgumentException">No voxel, malformed coordinates, a condition that does not fit, or given noise of another shape.</exception>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public TrellisStageResult<SparseTensor> SampleStructuredLatent(TrellisCondition condition, Tensor coords, TrellisStageOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(condition);
        ArgumentNullException.ThrowIfNull(coords);
        if (coords.dim() != 2 || coords.shape[1] != 4 || coords.shape[0] == 0)
            throw new ArgumentException($"coords must be occupied voxels [N >= 1, 4] (sample, x, y, z), found [{string.Join(", ", coords.shape)}].", nameof(coords));
        options ??= new TrellisStageOptions();
        var sampler = Checked(options.Sampler ?? LatentSampler);
        var sw = Stopwatch.StartNew();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var device = ModuleInfo.DeviceOf(LatentFlow);
        var sites = new SparseCoordinates(coords.to(ScalarType.Int32, device), (int)LatentFlow.Config.Resolution);
        CheckCondition(condition, sites.BatchSize, nameof(condition), options.MultiImage);
        var noise = StageNoise(options, new[] { sites.Count, (long)LatentFlow.Config.InChannels }, ModuleInfo.DTypeOf(LatentFlow), device, "stage-2");
        var x = new SparseTensor(noise, sites);
        using var kv = KvCacheSession.Begin();   // no weight changes during the run: each layer projects the condition once
        var stageCondition = condition.As(LatentFlow.DType);   // cast once, not by the adapter on every step (the flow keeps its torso cast)
        using var result = sampler.CreateSolver().Sample(Guided(sampler, new SLatFlowAdapter(LatentFlow), stageCondition, options.MultiImage), x.ToLatent(), stageCondition.Cond, sampler.Grid(),
            new SamplerOptions { Progress = new StageProgress(options.Progress, TrellisStage.StructuredLatent), CancellationToken = options.CancellationToken });
        using var normalized = result.Samples;
        var feats = Normalization.Denormalize(normalized);
        return new TrellisStageResult<SparseTensor>(x.ReplaceFeats(feats).MoveToOuterDisposeScope(), result.Evaluations, sw.Elapsed);
    }

    /// <summary>The formats this pipeline has decoders for.</summary>
    public TrellisFormats AvailableFormats =>
        (GaussianDecoder is null ? TrellisFormats.None : TrellisFormats.Gaussians) | (MeshDecoder is null ? TrellisFormats.None : TrellisFormats.Mesh);

    /// <summary>Decodes a structured latent (TRELLIS's <c>decode_slat</c>) into the requested <paramref name="formats"/>.</summary>
    /// <param name="slat">The un-normalised structured latent (<see cref="SampleStructuredLatent"/>).</param>
    /// <param name="formats">What to decode.</param>
    /// <returns>One entry per sample of each requested format (the caller disposes the result).</returns>
    /// <remarks>With both formats, meshes whose decoder has no colour channels get vertex colours sampled from the same
    /// sample's Gaussians (<see cref="Export.GaussianVertexColors"/>); the decoder's own colours are kept when present.</remarks>
    /// <exception cref="InvalidOperationException">A requested format whose decoder this pipeline lacks.</exception>
    public TrellisDecoded Decode(SparseTensor slat, TrellisFormats formats = TrellisFormats.Gaussians)
    {
        ArgumentNullException.ThrowIfNull(slat);
        var gaussians = formats.HasFlag(TrellisFormats.Gaussians) ? DecodeGaussians(slat) : null;
        IReadOnlyList<Mesh>? meshes = null;
        try
        {
            meshes = formats.HasFlag(TrellisFormats.Mesh) ? DecodeMeshes(slat) : null;
            // a mesh decoder without colour channels: colours sampled from the Gaussians at the surface
            if (meshes is not null && gaussians is not null) meshes = Export.GaussianVertexColors.FillMissing(meshes, gaussians);
        }
        catch
        {
            if (gaussians is not null) foreach (var g in gaussians) g.Dispose();
            throw;
        }
        return new TrellisDecoded(gaussians, meshes);
    }

    /// <summary>
    /// Decodes a structured latent into one mesh per sample with <see cref="MeshDecoder"/> and FlexiCubes, as TRELLIS's
    /// <c>decode_slat</c> with <c>formats=['mesh']</c> (inference mode): vertices in the <c>[-0.5, 0.5]³</c> box (z up),
    /// the decoder's colours (the first 3 of its 6 vertex channels) when it has them, and area-weighted vertex normals.
    /// A sample without surface gives an empty mesh.
    /// </summary>
    /// <exception cref="InvalidOperationException">The pipeline has no mesh decoder.</exception>
    public IReadOnlyList<Mesh> DecodeMeshes(SparseTensor slat)
    {
        ArgumentNullException.ThrowIfNull(slat);
        if (MeshDecoder is null) throw new InvalidOperationException("this pipeline has no mesh decoder (pipeline.json models.slat_decoder_mesh).");
        using var noGrad = torch.no_grad();
        ReleaseFreedHeap();   // the 256³ stage needs the most memory: not on top of what the Gaussian decoder freed
        var meshes = new List<Mesh>();
        try
        {
            IReadOnlyList<FlexiCubesInputs> inputs;
            using (var scope = torch.NewDisposeScope())
            {
                var feats = slat.Feats.to(ModuleInfo.DTypeOf(MeshDecoder), ModuleInfo.DeviceOf(MeshDecoder));
                inputs = MeshDecoder.forward(slat.ReplaceFeats(feats));
            }
            try
            {
                foreach (var input in inputs)
                {
                    using var scope = torch.NewDisposeScope();
                    using var extracted = FlexiCubes.Extract(input);
                    meshes.Add(extracted.ToMesh());
                }
            }
            finally
            {
                foreach (var input in inputs) input.Dispose();
            }
        }
        catch
        {
            foreach (var m in meshes) m.Dispose();
            throw;
        }
        return meshes;
    }

    /// <summary>Decodes a structured latent into one Gaussian set per sample with <see cref="GaussianDecoder"/>.</summary>
    /// <exception cref="InvalidOperationException">The pipeline has no Gaussian decoder.</exception>
    public IReadOnlyList<Gaussians> DecodeGaussians(SparseTensor slat)
    {
        ArgumentNullException.ThrowIfNull(slat);
        if (GaussianDecoder is null) throw new InvalidOperationException("this pipeline has no Gaussian decoder (pipeline.json models.slat_decoder_gs).");
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var feats = slat.Feats.to(ModuleInfo.DTypeOf(GaussianDecoder), ModuleInfo.DeviceOf(GaussianDecoder));
        return GaussianDecoder.forward(slat.ReplaceFeats(feats));
    }

    // ------------------------------------------------------------------------------------------------------------

    private static IFlowModel Guided(StageSampler sampler, IFlowModel model, TrellisCondition condition, MultiImageMode? multiImage) =>
        multiImage is { } mode ? new MultiImageGuidance(model, sampler, mode, condition.NegCond) : sampler.Guide(model, condition.NegCond);

    private void CheckCondition(TrellisCondition condition, long batch, string name, MultiImageMode? multiImage = null)
    {
        if (multiImage is not null && condition.Channels == ConditionChannels) return;   // rows are views, any count
        if (condition.Channels != ConditionChannels || (condition.BatchSize != 1 && condition.BatchSize != batch))
            throw new ArgumentException($"condition must be [1 or {batch}, L, {ConditionChannels}], found [{string.Join(", ", condition.Cond.shape)}].", name);
    }

    private static TrellisStageOptions Stage(TrellisRunOptions run, StageSampler? sampler, Tensor noise) => new()
    {
        Sampler = sampler, Noise = noise, Progress = run.Progress, CancellationToken = run.CancellationToken, MultiImage = run.MultiImage,
    };

    private static Tensor DrawNoise(long[] shape, Generator gen) => torch.randn(shape, dtype: ScalarType.Float32, generator: gen);

    private static Tensor StageNoise(TrellisStageOptions options, long[] shape, ScalarType dtype, Device device, string stage)
    {
        if (options.Noise is { } given)
        {
            if (!given.shape.SequenceEqual(shape))
                throw new ArgumentException($"{stage} noise must have shape [{string.Join(", ", shape)}], found [{string.Join(", ", given.shape)}].", nameof(options));
            return given.to(dtype, device);
        }
        return DrawNoise(shape, new Generator((ulong)options.Seed)).to(dtype, device);
    }

    /// <summary>The voxels of the non-empty samples with their sample index renumbered 0..K−1, those samples, and the
    /// voxel count of every sample.</summary>
    private static (Tensor Compact, long[] NonEmpty, long[] Counts) NonEmptySamples(Tensor coords, int batch)
    {
        var batchCol = coords[.., 0].to(ScalarType.Int64).cpu();
        var counts = torch.bincount(batchCol, minlength: batch).data<long>().ToArray();
        var nonEmpty = Enumerable.Range(0, batch).Where(i => counts[i] > 0).Select(i => (long)i).ToArray();
        var remap = torch.full(new long[] { batch }, -1L, dtype: ScalarType.Int64);
        for (int k = 0; k < nonEmpty.Length; k++) remap[nonEmpty[k]] = k;
        var compact = coords.to(ScalarType.Int64).cpu().clone();
        compact[.., 0] = remap.index_select(0, batchCol);
        return (compact.to(ScalarType.Int32), nonEmpty, counts);
    }

    private static TrellisOutput Assemble(Tensor z, Tensor coords, long[] counts, long[] nonEmpty, SparseTensor? slat, TrellisDecoded? decoded,
        TimeSpan[] times, int ssEvals, int slatEvals)
    {
        var perSample = new Tensor?[counts.Length];
        var gaussians = new Gaussians?[counts.Length];
        var meshes = new Mesh?[counts.Length];
        for (int k = 0; k < nonEmpty.Length; k++)
        {
            var (start, len) = slat!.RowRanges[k];
            perSample[nonEmpty[k]] = slat.Feats.narrow(0, start, len).clone().DetachFromDisposeScope();
            gaussians[nonEmpty[k]] = decoded?.Gaussians?[k];
            meshes[nonEmpty[k]] = decoded?.Meshes?[k];
        }
        var samples = new List<TrellisSample>();
        long offset = 0;
        for (int i = 0; i < counts.Length; i++)
        {
            var c = coords.narrow(0, offset, counts[i])[.., 1..].clone().DetachFromDisposeScope();
            offset += counts[i];
            samples.Add(new TrellisSample(i, c, perSample[i], gaussians[i], meshes[i]));
        }
        return new TrellisOutput(z.DetachFromDisposeScope(), coords.DetachFromDisposeScope(), samples, times, ssEvals, slatEvals);
    }

    private sealed class StageProgress(IProgress<TrellisProgress>? target, TrellisStage stage) : IProgress<SamplerProgress>
    {
        public void Report(SamplerProgress value) => target?.Report(new TrellisProgress(stage, value.Step, value.TotalSteps));
    }
}

/// <summary>dtype/device of a module's parameters.</summary>
internal static class ModuleInfo
{
    public static ScalarType DTypeOf(nn.Module m) => m.parameters().FirstOrDefault()?.dtype ?? ScalarType.Float32;
    public static Device DeviceOf(nn.Module m) => m.parameters().FirstOrDefault()?.device ?? CPU;
}
