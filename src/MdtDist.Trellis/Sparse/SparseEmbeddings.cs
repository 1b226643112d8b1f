using MdtDist.Trellis.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>TRELLIS's absolute position embedding of sparse voxel coordinates (the dense models' embedder).</summary>
internal static class SparseEmbeddings
{
    /// <summary>
    /// <see cref="AbsolutePositionEmbedder.Embed"/> of integer positions <paramref name="xyz"/> <c>[N, 3]</c>, computed in
    /// float32 (TRELLIS's frequency table), or float64 when <paramref name="dtype"/> is float64; returned in
    /// <paramref name="dtype"/>.
    /// </summary>
    public static Tensor AbsolutePosition(Tensor xyz, long channels, ScalarType dtype) =>
        AbsolutePositionEmbedder.Embed(xyz, channels, Precision.AtLeastFloat32(dtype)).As(dtype);
}
