using MdtDist.Core.Flow;
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

    /// <summary>The voxel coordinates of the rows.</summary>
    public SparseCoordinates Coordinates { get; }

    /// <summary>Wraps row features <paramref name="feats"/> (<c>[N, ...]</c>) as a sparse tensor on these sites.</summary>
    public SparseTensor ToSparseTensor(Tensor feats) => new(feats, Coordinates);
}
