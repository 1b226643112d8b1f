using MdtDist.Trellis.Conditioning;
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
    /// <summary>Decoding the structured latent (Gaussians, and meshes where supported).</summary>
    Decoding,
}

/// <summary>The representations <see cref="TrellisPipeline.Decode"/> makes from a structured latent (TRELLIS's <c>formats</c>).</summary>
[Flags]
public enum TrellisFormats
{
    /// <summary>Nothing: the run stops at the structured latent.</summary>
    None = 0,
    /// <summary>3D Gaussians (<c>slat_decoder_gs</c>).</summary>
    Gaussians = 1,
    /// <summary>A mesh (<c>slat_decoder_mesh</c> + FlexiCubes; see <see cref="TrellisPipeline.DecodeMeshes"/>).</summary>
    Mesh = 2,
}

/// <summary>A progress report of a <see cref="TrellisPipeline"/> stage.</summary>
/// <param name="Stage">The stage.</param>
/// <param name="Step">Steps of that stage completed.</param>
/// <param name="TotalSteps">Steps of that stage.</param>
public sealed record TrellisProgress(TrellisStage Stage, int Step, int TotalSteps);

/// <summary>Per-call settings of one flow stage (<see cref="TrellisPipeline.SampleSparseStructure"/>,
/// <see cref="TrellisPipeline.SampleStructuredLatent"/>).</summary>
public sealed class TrellisStageOptions
{
    /// <summary>Overrides the pipeline's sampler of this stage for this call.</summary>
    public StageSampler? Sampler { get; init; }

    /// <summary>Seed of the stage's noise when <see cref="Noise"/> is not given (drawn in float32 on the CPU, so a seed gives
    /// the same noise on any device).</summary>
    public long Seed { get; init; } = 42;

    /// <summary>The starting noise itself: <c>[B, C, R, R, R]</c> for stage 1, <c>[N, C]</c> (one row per voxel) for stage 2.
    /// It is cast to the network's dtype and device; the caller keeps ownership.</summary>
    public Tensor? Noise { get; init; }

    /// <summary>Per-step progress.</summary>
    public IProgress<TrellisProgress>? Progress { get; init; }

    /// <summary>Checked between steps.</summary>
    public CancellationToken CancellationToken { get; init; }

    /// <summary>When set, the condition's rows are N views of one object (not one row per sample) combined with
    /// TRELLIS's multi-image mode (<see cref="MultiImageGuidance"/>); every sample sees all views.</summary>
    public MultiImageMode? MultiImage { get; init; }
}

/// <summary>Options of one <see cref="TrellisPipeline.Run(TrellisCondition, TrellisRunOptions?)"/>.</summary>
public sealed class TrellisRunOptions
{
    /// <summary>Seed of the noise of both stages (one generator, stage 1 drawn first; float32 on the CPU, so a seed gives the
    /// same noise on any device). Ignored for a stage whose noise is given.</summary>
    public long Seed { get; init; } = 42;

    /// <summary>Number of samples (a batch-1 condition is repeated; TRELLIS itself fails beyond 1).</summary>
    public int NumSamples { get; init; } = 1;

    /// <summary>Overrides the pipeline's stage-1 sampler for this run.</summary>
    public StageSampler? StructureSampler { get; init; }

    /// <summary>Overrides the pipeline's stage-2 sampler for this run.</summary>
    public StageSampler? LatentSampler { get; init; }

    /// <summary>Given stage-1 noise <c>[NumSamples, C, R, R, R]</c> instead of drawing it from <see cref="Seed"/>.</summary>
    public Tensor? StructureNoise { get; init; }

    /// <summary>Given stage-2 noise <c>[N, C]</c> (one row per occupied voxel of the non-empty samples, in the order of
    /// <see cref="TrellisOutput.Coords"/>) instead of drawing it from <see cref="Seed"/>.</summary>
    public Tensor? LatentNoise { get; init; }

    /// <summary>What to decode the structured latent into (default Gaussians; skipped for formats whose decoder the
    /// pipeline lacks).</summary>
    public TrellisFormats Formats { get; init; } = TrellisFormats.Gaussians;

    /// <summary>Per-stage progress.</summary>
    public IProgress<TrellisProgress>? Progress { get; init; }

    /// <summary>Checked between steps and stages.</summary>
    public CancellationToken CancellationToken { get; init; }

    /// <summary>When set, the condition's rows are N views of one object (TRELLIS's <c>run_multi_image</c>), combined in
    /// both stages with this mode; every sample sees all views.</summary>
    public MultiImageMode? MultiImage { get; init; }
}
