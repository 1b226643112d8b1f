using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MiniTrellis.Data;

/// <summary>Conversions between <see cref="ShapeSample"/>s and the tensors the TRELLIS networks take.</summary>
public static class ShapeTensors
{
    /// <summary>Dense occupancy <c>[B, 1, R, R, R]</c> (1 on the surface voxels, float32).</summary>
    public static Tensor Occupancy(IReadOnlyList<ShapeSample> shapes)
    {
        const int r = ShapeDistribution.Resolution;
        var data = new float[shapes.Count * r * r * r];
        for (int b = 0; b < shapes.Count; b++)
        {
            var v = shapes[b].Voxels;
            for (int i = 0; i < v.Length; i += 3)
                data[((b * r + v[i]) * r + v[i + 1]) * r + v[i + 2]] = 1f;
        }
        return torch.tensor(data, new long[] { shapes.Count, 1, r, r, r });
    }

    /// <summary>Coordinates <c>[N, 4]</c> int32 rows (sample, x, y, z) of the shapes' voxels, in order.</summary>
    public static Tensor Coords(IReadOnlyList<ShapeSample> shapes)
    {
        var list = new List<int>();
        for (int b = 0; b < shapes.Count; b++)
        {
            var v = shapes[b].Voxels;
            for (int i = 0; i < v.Length; i += 3) { list.Add(b); list.Add(v[i]); list.Add(v[i + 1]); list.Add(v[i + 2]); }
        }
        return torch.tensor(list.ToArray(), new long[] { list.Count / 4, 4 }, dtype: ScalarType.Int32);
    }

    /// <summary>The shapes' colours as a sparse tensor <c>[N, 3]</c> on their voxels.</summary>
    public static SparseTensor Colors(IReadOnlyList<ShapeSample> shapes)
    {
        var feats = shapes.SelectMany(s => s.Colors).ToArray();
        return new SparseTensor(torch.tensor(feats, new long[] { feats.Length / 3, 3 }), Coords(shapes), ShapeDistribution.Resolution, shapes.Count);
    }

    /// <summary>The voxels of each sample of an int <c>[N, 4]</c> coordinate tensor, as (x, y, z) triples, for <paramref name="batch"/> samples.</summary>
    public static int[][] SplitCoords(Tensor coords, int batch)
    {
        var c = coords.to(ScalarType.Int32).cpu().contiguous().data<int>().ToArray();
        var lists = Enumerable.Range(0, batch).Select(_ => new List<int>()).ToArray();
        for (int i = 0; i < c.Length; i += 4) { lists[c[i]].Add(c[i + 1]); lists[c[i]].Add(c[i + 2]); lists[c[i]].Add(c[i + 3]); }
        return lists.Select(l => l.ToArray()).ToArray();
    }

    /// <summary>Surface points of a voxel set for Chamfer distances: voxel centres in unit-cube coordinates <c>[n, 3]</c> (float64).</summary>
    public static Tensor Points(int[] voxels)
    {
        var p = new double[voxels.Length];
        for (int i = 0; i < voxels.Length; i++) p[i] = (voxels[i] + 0.5) / ShapeDistribution.Resolution;
        return torch.tensor(p, new long[] { voxels.Length / 3, 3 }, dtype: ScalarType.Float64);
    }
}
