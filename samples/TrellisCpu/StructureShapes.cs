using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>
/// Fixed occupied-voxel structures for stage 2. A flow with random weights decodes to random occupancy, so stage 2 runs on
/// a stated shape instead: a hollow sphere (or ellipsoid) of shell thickness 3 voxels in the 64³ grid, its radius chosen
/// so the voxel count is the closest to the requested one (TRELLIS structures are surfaces a few voxels thick; released
/// samples hold about 15–25 k voxels).
/// </summary>
/// <remarks>The one generator of these shells: the benchmarks project compiles this file too (a linked source).</remarks>
public static class StructureShapes
{
    /// <summary>Shell thickness in voxels.</summary>
    public const double Thickness = 3.0;

    /// <summary>
    /// The voxels <c>(x, y, z)</c> of a <paramref name="resolution"/>³ grid whose scaled distance
    /// <c>d = |((x, y, z) − centre) / semiAxes|</c> lies in <c>[radius − thickness, radius)</c>, as int32 rows
    /// <c>(0, x, y, z)</c> in row-major order (TRELLIS's order).
    /// </summary>
    /// <param name="radius">Outer radius in voxels.</param>
    /// <param name="thickness">Shell thickness in voxels.</param>
    /// <param name="resolution">Grid side.</param>
    /// <param name="centre">The centre; the grid's centre <c>(resolution − 1) / 2</c> on every axis when null.</param>
    /// <param name="semiAxes">Per-axis scale of the distance (an ellipsoid); a sphere when null.</param>
    public static Tensor Shell(double radius, double thickness = Thickness, int resolution = 64,
        (double X, double Y, double Z)? centre = null, (double X, double Y, double Z)? semiAxes = null)
    {
        var rows = new List<int>();
        Walk(radius, thickness, resolution, centre, semiAxes, (x, y, z) => rows.AddRange(new[] { 0, x, y, z }));
        return torch.tensor(rows.ToArray(), new long[] { rows.Count / 4, 4 }, dtype: ScalarType.Int32);
    }

    /// <summary>The centred sphere shell whose voxel count is closest to <paramref name="targetVoxels"/>, as int32 rows (0, x, y, z) in row-major order.</summary>
    /// <param name="targetVoxels">Requested count, 1 … the largest shell that fits (about 32 k at 64³).</param>
    /// <param name="resolution">Grid side.</param>
    /// <returns>The coordinates and the shell's outer radius.</returns>
    /// <exception cref="ArgumentException">A target outside what a shell in the grid can hold.</exception>
    public static (Tensor Coords, double Radius) ShellWithVoxelCount(int targetVoxels, int resolution = 64)
    {
        int Count(double r)
        {
            int n = 0;
            Walk(r, Thickness, resolution, null, null, (_, _, _) => n++);
            return n;
        }
        double maxR = (resolution - 1) / 2.0 + 0.5;
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
        // (never an empty shell: hi holds at least the target)
        int nLo = Count(lo);
        double radius = nLo > 0 && Math.Abs(nLo - targetVoxels) <= Math.Abs(Count(hi) - targetVoxels) ? lo : hi;
        return (Shell(radius, Thickness, resolution), radius);
    }

    private static void Walk(double radius, double thickness, int resolution, (double X, double Y, double Z)? centre,
        (double X, double Y, double Z)? semiAxes, Action<int, int, int> visit)
    {
        double mid = (resolution - 1) / 2.0;
        var (cx, cy, cz) = centre ?? (mid, mid, mid);
        var (ax, ay, az) = semiAxes ?? (1.0, 1.0, 1.0);
        for (int x = 0; x < resolution; x++)
            for (int y = 0; y < resolution; y++)
                for (int z = 0; z < resolution; z++)
                {
                    double dx = (x - cx) / ax, dy = (y - cy) / ay, dz = (z - cz) / az;
                    double d = Math.Sqrt(dx * dx + dy * dy + dz * dz);
                    if (d < radius && d >= radius - thickness) visit(x, y, z);
                }
    }
}
