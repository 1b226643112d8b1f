using MdtDist.Trellis.Modules;
using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>
/// A batch of sparse voxel grids in TRELLIS's layout: features <c>[N, C]</c> (or <c>[N, ...]</c>) on the active sites
/// of a <see cref="SparseCoordinates"/> (<c>[N, 4]</c> rows of sample, x, y, z, contiguous per sample).
/// Operations that keep the sites (<see cref="ReplaceFeats"/>, submanifold convolution, attention, norms) share the
/// coordinate object and with it its cached neighbour maps.
/// </summary>
public sealed class SparseTensor
{
    /// <summary>Creates a sparse tensor; the coordinates are validated (see <see cref="SparseCoordinates"/>).</summary>
    /// <param name="feats">Features, <c>[N, ...]</c>, on the device of <paramref name="coords"/>.</param>
    /// <param name="coords"><c>[N, 4]</c> integer (sample, x, y, z) rows, contiguous per sample and ordered by sample.</param>
    /// <param name="resolution">When given, every spatial coordinate must lie in <c>[0, resolution)</c>.</param>
    /// <param name="batchSize">Number of samples; by default the largest sample index + 1.</param>
    /// <exception cref="ArgumentException">Malformed coordinates, or feats whose row count or device does not match.</exception>
    public SparseTensor(Tensor feats, Tensor coords, int? resolution = null, long? batchSize = null)
        : this(feats, new SparseCoordinates(coords, resolution, batchSize))
    {
    }

    /// <summary>Creates a sparse tensor with features <paramref name="feats"/> on existing sites.</summary>
    /// <exception cref="ArgumentException">The row count or device of <paramref name="feats"/> does not match.</exception>
    public SparseTensor(Tensor feats, SparseCoordinates coordinates)
    {
        ArgumentNullException.ThrowIfNull(feats);
        ArgumentNullException.ThrowIfNull(coordinates);
        if (feats.dim() < 1 || feats.shape[0] != coordinates.Count)
            throw new ArgumentException($"feats must have one row per voxel: expected shape [{coordinates.Count}, ...], found [{string.Join(", ", feats.shape)}].", nameof(feats));
        if (feats.device_type != coordinates.Device.type || feats.device_index != coordinates.Device.index)
            throw new ArgumentException($"feats are on {feats.device} but coords are on {coordinates.Device}.", nameof(feats));
        Feats = feats;
        Coordinates = coordinates;
    }

    /// <summary>The features, <c>[N, ...]</c>.</summary>
    public Tensor Feats { get; }

    /// <summary>The sites (shared with every tensor derived without changing them).</summary>
    public SparseCoordinates Coordinates { get; }

    /// <summary>The coordinates, <c>[N, 4]</c> int32 (sample, x, y, z).</summary>
    public Tensor Coords => Coordinates.Coords;

    /// <summary>Number of samples.</summary>
    public long BatchSize => Coordinates.BatchSize;

    /// <summary>Number of rows (active voxels over the batch).</summary>
    public long Count => Coordinates.Count;

    /// <summary>Feature channels (<c>Feats.shape[1]</c>; 1 for 1-D feats).</summary>
    public long Channels => Feats.dim() > 1 ? Feats.shape[1] : 1;

    /// <summary>Rows of each sample as (start, length).</summary>
    public IReadOnlyList<(long Start, long Length)> RowRanges =>
        Enumerable.Range(0, (int)BatchSize).Select(b => (Coordinates.RowOffsets[b], Coordinates.RowCounts[b])).ToArray();

    /// <summary>The feature dtype.</summary>
    public ScalarType Dtype => Feats.dtype;

    /// <summary>The device.</summary>
    public Device Device => Feats.device;

    /// <summary>The latent layout of these sites (Core's losses and samplers reduce per sample through it).</summary>
    public SparseLatentLayout Layout => Coordinates.Layout;

    /// <summary>The same sites with new features (same row order), e.g. the result of an elementwise op on <see cref="Feats"/>.</summary>
    /// <exception cref="ArgumentException">The row count or device of <paramref name="feats"/> does not match.</exception>
    public SparseTensor ReplaceFeats(Tensor feats) => new(feats, Coordinates);

    /// <summary>The features as a Core <see cref="Latent"/> with a <see cref="SparseLatentLayout"/>.</summary>
    public Latent ToLatent() => new(Feats, Layout);

    /// <summary>Rebuilds the sparse tensor of a latent whose layout is a <see cref="SparseLatentLayout"/>.</summary>
    /// <exception cref="ArgumentException">The latent is not laid out on sparse coordinates.</exception>
    public static SparseTensor FromLatent(Latent latent)
    {
        ArgumentNullException.ThrowIfNull(latent);
        if (latent.Layout is not SparseLatentLayout layout)
            throw new ArgumentException($"the latent must have a {nameof(SparseLatentLayout)}, found {latent.Layout.GetType().Name}.", nameof(latent));
        return new SparseTensor(latent.Data, layout.Coordinates);
    }

    /// <summary>Moves the features out of the current dispose scope (the coordinates are never scope-owned).</summary>
    public SparseTensor MoveToOuterDisposeScope()
    {
        Feats.MoveToOuterDisposeScope();
        return this;
    }

    /// <summary>A per-sample tensor <c>[B, ...]</c> expanded to one row per voxel, <c>[N, ...]</c>.</summary>
    internal Tensor PerRow(Tensor perSample)
    {
        if (perSample.shape[0] != BatchSize)
            throw new ArgumentException($"expected a per-sample tensor with {BatchSize} rows, found shape [{string.Join(", ", perSample.shape)}].", nameof(perSample));
        return perSample.index_select(0, Coordinates.SampleIndex.On(perSample.device));
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"SparseTensor(feats [{string.Join(", ", Feats.shape)}] {Dtype}, batch {BatchSize}, rows per sample [{string.Join(", ", Coordinates.RowCounts)}], {Device})";
}
