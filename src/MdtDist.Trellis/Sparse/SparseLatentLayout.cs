using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>
/// The layout of a TRELLIS structured latent: rows <c>[N, C]</c> on the active voxels of a
/// <see cref="SparseCoordinates"/>, the sample index of a row being <c>coords[:, 0]</c>. It carries the coordinates,
/// so a flow adapter can rebuild the <see cref="SparseTensor"/> from a <see cref="Latent"/>, and the cached neighbour
/// maps survive from one sampler step to the next.
/// </summary>
public sealed class SparseLatentLayout : RowLayout
{
    internal SparseLatentLayout(SparseCoordinates coordinates)
        : base(coordinates.SampleIndex, coordinates.BatchSize)
    {
        Coordinates = coordinates;
    }

    private readonly object _lock = new();
    private SparseLatentLayout? _repeated;
    private int _repeatedCopies;

    /// <inheritdoc />
    /// <remarks>
    /// The result is again a <see cref="SparseLatentLayout"/>: copy k's rows carry sample index <c>b + k·B</c> and the
    /// same voxels. It is built once per copy count and kept, so its neighbour maps are cached across sampler steps.
    /// </remarks>
    public override LatentLayout RepeatBatch(int copies)
    {
        if (copies < 1) throw new ArgumentException($"copies must be >= 1, got {copies}.", nameof(copies));
        if (copies == 1) return this;
        lock (_lock)
        {
            if (_repeated is not null && _repeatedCopies == copies) return _repeated;
            var c = Coordinates;
            using var scope = torch.NewDisposeScope();
            var parts = Enumerable.Range(0, copies).Select(k =>
            {
                var shifted = c.Coords.clone();
                shifted.select(1, 0).add_(k * c.BatchSize);
                return shifted;
            }).ToArray();
            var coords = torch.cat(parts, 0);
            var rowCounts = Enumerable.Repeat(c.RowCounts, copies).SelectMany(r => r).ToArray();
            var repeated = new SparseCoordinates(coords.MoveToOuterDisposeScope(), c.BatchSize * copies, rowCounts, c.Resolution, c.Extent);
            _repeated = repeated.Layout;
            _repeatedCopies = copies;
            return _repeated;
        }
    }

    /// <summary>The voxel coordinates of the rows.</summary>
    public SparseCoordinates Coordinates { get; }

    /// <summary>Wraps row features <paramref name="feats"/> (<c>[N, ...]</c>) as a sparse tensor on these sites.</summary>
    public SparseTensor ToSparseTensor(Tensor feats) => new(feats, Coordinates);
}
