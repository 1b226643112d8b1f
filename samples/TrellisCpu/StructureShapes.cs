using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>
/// Fixed occupied-voxel structures for stage 2. A flow with random weights decodes to random occupancy, so stage 2 runs on
/// a stated shape instead: a hollow sphere of shell thickness 3 voxels centred in the 64³ grid, its radius chosen so the
/// voxel count is the closest to the requested one (TRELLIS structures are surfaces a few voxels thick; released
/// samples hold about 15–25 k voxels).
/// </summary>
public static class StructureShapes
{
    /// <summary>Shell thickness in voxels.</summary>
    public const double Thickness = 3.0;

    /// <summary>The shell whose voxel count is closest to <paramref name="targetVoxels"/>, as int32 rows (0, x, y, z) in row-major order.</summary>
    /// <param name="targetVoxels">Requested count, 1 … the largest shell that fits (about 32 k at 64³).</param>
    /// <param name="resolution">Grid side.</param>
    /// <returns>The coordinates and the shell's outer radius.</returns>
    /// <exception cref="ArgumentException">A target outside what a shell in the grid can hold.</exception>
    public static (Tensor Coords, double Radius) Shell(int targetVoxels, int resolution = 64)
    {
        double c = (resolution - 1) / 2.0;
        int Count(double r)
        {
            int n = 0;
            for (int x = 0; x < resolution; x++)
                for (int y = 0; y < resolution; y++)
                    for (int z = 0; z < resolution; z++)
                    {
                        double d = Math.Sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c));
                        if (d < r && d >= r - Thickness) n++;
                    }
            return n;
        }
        double maxR = c + 0.5;
        int maxCount = Count(maxR);
        if (targetVoxels < 1 || targetVoxels > maxCount)
            throw new ArgumentException($"voxels must be in [1, {maxCount}] (a {Thickness}-voxel shell in a {resolution}³ grid), got {targetVoxels}.", nameof(targetVoxels));
        // the count grows monotonically with the radius: bisect, then take the closer end
        double lo = 0.5, hi = maxR;
        for (int i = 0; i < 30; i++)
        {
            double mid = (lo + hi) / 2;
            if (Count(mid) < targetVoxels) lo = mid; else hi = mid;
        }
        double radius = Math.Abs(Count(lo) - targetVoxels) <= Math.Abs(Count(hi) - targetVoxels) ? lo : hi;
        var rows = new List<int>();
        for (int x = 0; x < resolution; x++)
            for (int y = 0; y < resolution; y++)
                for (int z = 0; z < resolution; z++)
                {
                    double d = Math.Sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c));
                    if (d < radius && d >= radius - Thickness) rows.AddRange(new[] { 0, x, y, z });
                }
        if (rows.Count == 0) rows.AddRange(new[] { 0, resolution / 2, resolution / 2, resolution / 2 });
        return (torch.tensor(rows.ToArray(), new long[] { rows.Count / 4, 4 }, dtype: ScalarType.Int32), radius);
    }
}
