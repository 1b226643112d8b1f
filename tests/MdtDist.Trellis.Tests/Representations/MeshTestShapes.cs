using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

/// <summary>Meshes and FlexiCubes inputs with known answers.</summary>
internal static class MeshTestShapes
{
    /// <summary>
    /// FlexiCubes inputs of a sphere of <paramref name="radius"/> (in the [-0.5, 0.5]³ box) on every cube of a
    /// <paramref name="res"/>³ grid: the sdf is the exact signed distance (the −1/res bias pre-compensated), no
    /// deformation, neutral weights, and colour channel 0 = (x + 1) / 2 (as a logit; in [0.25, 0.75]), the others 0.5.
    /// </summary>
    public static FlexiCubesInputs Sphere(int res, double radius, double centerX = 0, bool useColor = true, ScalarType dtype = ScalarType.Float64)
    {
        using var scope = torch.NewDisposeScope();
        var ids = torch.arange(res * res * res, dtype: ScalarType.Int64);
        var coords = torch.stack(new[] { ids.div(res * res, RoundingMode.floor), ids.div(res, RoundingMode.floor) % res, ids % res }, 1);
        var corners = torch.tensor(new long[] { 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1 }, new long[] { 8, 3 });
        var p = (coords.unsqueeze(1) + corners.unsqueeze(0)).to(ScalarType.Float64) / res - 0.5;   // [n, 8, 3] corner positions
        var centre = torch.tensor(new[] { centerX, 0, 0 }, dtype: ScalarType.Float64);
        var sdf = (p - centre).norm(2) - radius + 1.0 / res;
        long n = coords.shape[0];
        var feats = torch.zeros(n, useColor ? 101 : 53, dtype: ScalarType.Float64);
        feats[.., 0..8] = sdf;
        if (useColor)
        {
            var red = (p[.., .., 0] + 1) / 2;                              // in [0.25, 0.75] inside the box
            var color = torch.zeros(n, 8, 6, dtype: ScalarType.Float64);
            color[.., .., 0] = torch.log(red / (1 - red));
            feats[.., 53..101] = color.reshape(n, 48);
        }
        return FlexiCubesInputs.FromFeatures(coords, feats.to(dtype), res, useColor);
    }

    /// <summary>Every undirected edge of a face list and how many faces use it.</summary>
    public static Dictionary<(long, long), int> EdgeUse(long[] f)
    {
        var use = new Dictionary<(long, long), int>();
        for (int i = 0; i < f.Length; i += 3)
            for (int k = 0; k < 3; k++)
            {
                long a = f[i + k], b = f[i + (k + 1) % 3];
                var key = a < b ? (a, b) : (b, a);
                use[key] = use.TryGetValue(key, out int c) ? c + 1 : 1;
            }
        return use;
    }

    /// <summary>Signed volume of a closed triangle mesh (positive when faces are counter-clockwise seen from outside).</summary>
    public static double SignedVolume(double[] v, long[] f)
    {
        double vol = 0;
        for (int i = 0; i < f.Length; i += 3)
        {
            long a = 3 * f[i], b = 3 * f[i + 1], c = 3 * f[i + 2];
            vol += v[a] * (v[b + 1] * v[c + 2] - v[b + 2] * v[c + 1])
                 - v[a + 1] * (v[b] * v[c + 2] - v[b + 2] * v[c])
                 + v[a + 2] * (v[b] * v[c + 1] - v[b + 1] * v[c]);
        }
        return vol / 6;
    }
}
