using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

internal static class SparseTestData
{
    /// <summary>
    /// Random distinct voxels per sample in a <paramref name="resolution"/>³ grid, rows contiguous per sample and in a
    /// random (unsorted) order within each sample: <c>[N, 4]</c> int64.
    /// </summary>
    public static Tensor RandomCoords(int resolution, int[] voxelsPerSample, int seed)
    {
        var rng = new Random(seed);
        var rows = new List<long>();
        for (int b = 0; b < voxelsPerSample.Length; b++)
        {
            var cells = Enumerable.Range(0, resolution * resolution * resolution).OrderBy(_ => rng.Next()).Take(voxelsPerSample[b]);
            foreach (var cell in cells)
                rows.AddRange(new long[] { b, cell / (resolution * resolution), cell / resolution % resolution, cell % resolution });
        }
        return torch.tensor(rows.ToArray(), dtype: ScalarType.Int64).view(-1, 4);
    }

    /// <summary>A compact blob: voxels within distance <paramref name="radius"/> of the grid centre (dense neighbourhoods).</summary>
    public static Tensor BlobCoords(int resolution, double radius, int samples)
    {
        var rows = new List<long>();
        double c = (resolution - 1) / 2.0;
        for (int b = 0; b < samples; b++)
            for (int x = 0; x < resolution; x++)
                for (int y = 0; y < resolution; y++)
                    for (int z = 0; z < resolution; z++)
                        if (Math.Sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c)) <= radius + 0.3 * b)
                            rows.AddRange(new long[] { b, x, y, z });
        return torch.tensor(rows.ToArray(), dtype: ScalarType.Int64).view(-1, 4);
    }

    public static double MaxRel(Tensor expected, Tensor actual)
    {
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64);
        var a = actual.to(ScalarType.Float64);
        return (e - a).abs().max().item<double>() / Math.Max(1.0, e.abs().max().item<double>());
    }

    /// <summary>Scatters sparse feats [N, C] into dense per-sample volumes [B, C, R, R, R].</summary>
    public static Tensor ToDense(Tensor feats, Tensor coords, long batch, int resolution)
    {
        long c = feats.shape[1];
        var dense = torch.zeros(new[] { batch, resolution, resolution, resolution, c }, dtype: feats.dtype);
        var co = coords.to(ScalarType.Int64);
        dense.index_put_(feats, co[.., 0], co[.., 1], co[.., 2], co[.., 3]);
        return dense.permute(0, 4, 1, 2, 3).contiguous();
    }

    /// <summary>Reads dense [B, C, R, R, R] at the sparse sites: [N, C].</summary>
    public static Tensor FromDense(Tensor dense, Tensor coords)
    {
        var co = coords.to(ScalarType.Int64);
        long r = dense.shape[2];
        var lin = ((co[.., 0] * r + co[.., 1]) * r + co[.., 2]) * r + co[.., 3];
        return dense.permute(0, 2, 3, 4, 1).reshape(-1, dense.shape[1]).index_select(0, lin);
    }
}
