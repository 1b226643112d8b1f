using MdtDist.Trellis.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>The map between a fine coordinate set and its factor-f coarse set.</summary>
internal sealed class DownsampleMap
{
    public DownsampleMap(SparseCoordinates fine, SparseCoordinates coarse, Tensor fineToCoarse, Tensor countPlusOne)
    {
        Fine = fine;
        Coarse = coarse;
        FineToCoarse = fineToCoarse;
        CountPlusOne = countPlusOne;
    }

    public SparseCoordinates Fine { get; }
    public SparseCoordinates Coarse { get; }

    /// <summary><c>[N_fine]</c> int64: the coarse row of every fine row.</summary>
    public Tensor FineToCoarse { get; }

    /// <summary><c>[N_coarse, 1]</c> float64: fine rows per coarse row + 1 (TRELLIS's include_self "mean").</summary>
    public Tensor CountPlusOne { get; }
}

/// <summary>TRELLIS's sparse resampling ops (<c>SparseDownsample</c>, <c>SparseUpsample</c>, <c>SparseSubdivide</c>).</summary>
internal static class SparseSpatial
{
    /// <summary>
    /// The coarse sites of <paramref name="fine"/> at factor <paramref name="factor"/>: <c>unique((b, x//f, y//f, z//f))</c>
    /// sorted lexicographically, with the fine-to-coarse row map. Cached on the fine set; the coarse set remembers the
    /// fine one for <see cref="Upsample"/>.
    /// </summary>
    public static DownsampleMap Downsample(SparseCoordinates fine, int factor) =>
        fine.GetOrAdd($"downsample_{factor}", () =>
        {
            var co = fine.Coords64;
            // Coarse extent per axis = max coarse coordinate + 1; codes are monotone in (b, x, y, z), so the sorted
            // unique codes are the lexicographically sorted coarse sites.
            var extent = fine.Count == 0
                ? new long[] { 0, 0, 0 }
                : fine.Extent.Select(e => (e - 1) / factor + 1).ToArray();
            long ex = Math.Max(extent[0], 1), ey = Math.Max(extent[1], 1), ez = Math.Max(extent[2], 1);
            var cx = co[.., 1].div(factor, RoundingMode.floor);
            var cy = co[.., 2].div(factor, RoundingMode.floor);
            var cz = co[.., 3].div(factor, RoundingMode.floor);
            var code = ((co[.., 0] * ex + cx) * ey + cy) * ez + cz;
            var (uniq, inverse, counts) = code.unique(sorted: true, return_inverse: true, return_counts: true);
            var z = uniq % ez;
            var rest = uniq.div(ez, RoundingMode.floor);
            var y = rest % ey;
            rest = rest.div(ey, RoundingMode.floor);
            var x = rest % ex;
            var b = rest.div(ex, RoundingMode.floor);
            var coarseCoords = torch.stack(new[] { b, x, y, z }, 1).to(ScalarType.Int32);
            var bCpu = b.cpu();
            var rowCounts = torch.bincount(bCpu, minlength: fine.BatchSize).data<long>().ToArray();
            int? res = fine.Resolution is { } r ? (r + factor - 1) / factor : null;
            var coarse = new SparseCoordinates(coarseCoords, fine.BatchSize, rowCounts, res, extent);
            var map = new DownsampleMap(fine, coarse, inverse!.to(ScalarType.Int64).DetachFromDisposeScope(),
                (counts!.to(ScalarType.Float64) + 1).unsqueeze(1).DetachFromDisposeScope());
            coarse.Set($"upsample_{factor}", map);
            return map;
        });

    /// <summary>
    /// Average pooling by <paramref name="factor"/> with TRELLIS's semantics: <c>scatter_reduce(zeros, 'mean')</c> with
    /// the default include_self=True, i.e. <c>sum / (count + 1)</c>.
    /// </summary>
    public static SparseTensor Downsample(SparseTensor x, int factor)
    {
        var map = Downsample(x.Coordinates, factor);
        var feats = x.Feats;
        var idx = map.FineToCoarse.On(feats.device);
        var shape = feats.shape.ToArray();
        shape[0] = map.Coarse.Count;
        var sum = torch.zeros(shape, dtype: feats.dtype, device: feats.device).index_add(0, idx, feats, 1.0);
        var denom = map.CountPlusOne.to(feats.dtype, feats.device);
        if (feats.dim() != 2) denom = denom.reshape(new[] { map.Coarse.Count }.Concat(Enumerable.Repeat(1L, (int)feats.dim() - 1)).ToArray());
        return new SparseTensor(sum / denom, map.Coarse);
    }

    /// <summary>
    /// Nearest-neighbour up-sampling back to the fine sites a <see cref="Downsample(SparseTensor,int)"/> came from:
    /// each coarse row is copied to its fine rows, in the fine tensor's original order.
    /// </summary>
    /// <exception cref="InvalidOperationException">The tensor was not produced by a down-sampling with this factor.</exception>
    public static SparseTensor Upsample(SparseTensor x, int factor)
    {
        var map = UpsampleMap(x.Coordinates, factor);
        var idx = map.FineToCoarse.On(x.Device);
        return new SparseTensor(x.Feats.index_select(0, idx), map.Fine);
    }

    /// <summary>The map of the down-sampling by <paramref name="factor"/> that produced <paramref name="coarse"/>.</summary>
    /// <exception cref="InvalidOperationException">The sites were not produced by a down-sampling with this factor.</exception>
    public static DownsampleMap UpsampleMap(SparseCoordinates coarse, int factor) =>
        coarse.Get<DownsampleMap>($"upsample_{factor}")
            ?? throw new InvalidOperationException($"SparseUpsample({factor}) needs the map of a preceding SparseDownsample({factor}) of the same sites; the input tensor has none.");

    /// <summary>
    /// TRELLIS's <c>SparseSubdivide</c>: every voxel becomes its 8 children <c>2·c + (dx, dy, dz)</c>, the children of a
    /// voxel consecutive in (dx, dy, dz) order with dz fastest; features are copied to each child.
    /// </summary>
    public static SparseTensor Subdivide(SparseTensor x)
    {
        var fine = SubdivideSites(x.Coordinates);
        var f = x.Feats;
        var shape = f.shape.ToArray();
        var expanded = f.unsqueeze(1).expand(new[] { shape[0], 8L }.Concat(shape.Skip(1)).ToArray());
        return new SparseTensor(expanded.flatten(0, 1), fine);
    }

    /// <summary>The sites of <see cref="Subdivide"/> (cached on <paramref name="coarse"/>); the parent of fine row r is r / 8.</summary>
    public static SparseCoordinates SubdivideSites(SparseCoordinates coarse)
    {
        return coarse.GetOrAdd("subdivide", () =>
        {
            var offsets = new long[8 * 4];
            for (int i = 0; i < 8; i++)
            {
                offsets[i * 4 + 1] = (i >> 2) & 1;
                offsets[i * 4 + 2] = (i >> 1) & 1;
                offsets[i * 4 + 3] = i & 1;
            }
            var off = torch.tensor(offsets, dtype: ScalarType.Int64, device: coarse.Device).view(1, 8, 4);
            var scale = torch.tensor(new long[] { 1, 2, 2, 2 }, dtype: ScalarType.Int64, device: coarse.Device);
            var nc = (coarse.Coords64 * scale).unsqueeze(1) + off;
            var coords = nc.flatten(0, 1).to(ScalarType.Int32);
            var src = coarse;
            var counts = src.RowCounts.Select(c => c * 8).ToArray();
            var extent = src.Extent.Select(e => e * 2).ToArray();
            if (src.Count == 0) extent = new long[] { 0, 0, 0 };
            return new SparseCoordinates(coords, src.BatchSize, counts, src.Resolution is { } r ? r * 2 : null, extent);
        });
    }
}
