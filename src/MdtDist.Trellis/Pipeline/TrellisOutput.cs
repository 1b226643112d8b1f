using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>What one flow stage returns: its result, the network evaluations it cost and its wall time.</summary>
/// <typeparam name="T">The stage's result (<see cref="Tensor"/> for stage 1, <see cref="SparseTensor"/> for stage 2).</typeparam>
/// <param name="Result">The sampled latent (the caller owns it).</param>
/// <param name="Evaluations">Network evaluations (batched over samples; a guided step counts 2).</param>
/// <param name="Elapsed">Wall time of the stage.</param>
public sealed record TrellisStageResult<T>(T Result, int Evaluations, TimeSpan Elapsed);

/// <summary>What <see cref="TrellisPipeline.Decode"/> made of a structured latent, one entry per sample of its batch.</summary>
public sealed class TrellisDecoded : IDisposable
{
    internal TrellisDecoded(IReadOnlyList<Gaussians>? gaussians, IReadOnlyList<Mesh>? meshes = null)
    {
        Gaussians = gaussians;
        Meshes = meshes;
    }

    /// <summary>One Gaussian set per sample, or null when <see cref="TrellisFormats.Gaussians"/> was not decoded.</summary>
    public IReadOnlyList<Gaussians>? Gaussians { get; }

    /// <summary>One mesh per sample, or null when <see cref="TrellisFormats.Mesh"/> was not decoded.</summary>
    public IReadOnlyList<Mesh>? Meshes { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Gaussians is not null) foreach (var g in Gaussians) g.Dispose();
        if (Meshes is not null) foreach (var m in Meshes) m.Dispose();
    }
}

/// <summary>One generated sample.</summary>
public sealed class TrellisSample
{
    internal TrellisSample(int index, Tensor coords, Tensor? latent, Gaussians? gaussians, Mesh? mesh = null)
    {
        Index = index; Coords = coords; Latent = latent; Gaussians = gaussians; Mesh = mesh;
    }

    /// <summary>Index of the sample in the batch.</summary>
    public int Index { get; }

    /// <summary>True when stage 1 found no occupied voxel: there is no latent and no Gaussians.</summary>
    public bool IsEmpty => Coords.shape[0] == 0;

    /// <summary>Occupied voxels of the grid, <c>[n, 3]</c> int32 (x, y, z) in TRELLIS's row order.</summary>
    public Tensor Coords { get; }

    /// <summary>The un-normalised structured latent feats <c>[n, C]</c> (null when empty).</summary>
    public Tensor? Latent { get; }

    /// <summary>The decoded Gaussians (null when empty or not decoded).</summary>
    public Gaussians? Gaussians { get; }

    /// <summary>The decoded mesh (null when empty or not decoded; an empty mesh when FlexiCubes found no surface).</summary>
    public Mesh? Mesh { get; }
}

/// <summary>The result of a <see cref="TrellisPipeline"/> run. Dispose it to free its tensors.</summary>
public sealed class TrellisOutput : IDisposable
{
    internal TrellisOutput(Tensor structureLatent, Tensor coords, IReadOnlyList<TrellisSample> samples, TimeSpan[] times, int ssEvals, int slatEvals)
    {
        StructureLatent = structureLatent; Coords = coords; Samples = samples;
        StructureTime = times[0]; DecodeStructureTime = times[1]; LatentTime = times[2]; DecodeTime = times[3];
        StructureEvaluations = ssEvals; LatentEvaluations = slatEvals;
    }

    /// <summary>The stage-1 latent <c>[B, C, R, R, R]</c>.</summary>
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

    /// <summary>Wall time of the decoders.</summary>
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
            s.Mesh?.Dispose();
        }
    }
}
