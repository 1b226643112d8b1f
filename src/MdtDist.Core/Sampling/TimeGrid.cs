namespace MdtDist.Core.Sampling;

/// <summary>
/// Inference time grids: decreasing sequences t_0 = 1 &gt; … &gt; t_n = 0 that a solver walks through (one step per
/// consecutive pair).
/// </summary>
public static class TimeGrid
{
    /// <summary>
    /// TRELLIS's grid: <c>linspace(1, 0, steps + 1)</c> warped by <c>s·t / (1 + (s − 1)·t)</c> with s = <paramref name="rescaleT"/>
    /// (the same form as SD3's "shift"; s = 1 is uniform). Computed in double exactly as numpy does.
    /// </summary>
    /// <exception cref="ArgumentException">steps &lt; 1 or rescaleT is not a positive finite number.</exception>
    public static double[] Trellis(int steps, double rescaleT = 1.0)
    {
        if (steps < 1) throw new ArgumentException($"steps must be >= 1, got {steps}.", nameof(steps));
        if (!(rescaleT > 0) || double.IsInfinity(rescaleT)) throw new ArgumentException($"rescaleT must be a positive finite number, got {rescaleT}.", nameof(rescaleT));
        var grid = new double[steps + 1];
        for (int i = 0; i <= steps; i++)
        {
            double t = Linspace(1.0, 0.0, steps + 1, i);
            grid[i] = rescaleT * t / (1 + (rescaleT - 1) * t);
        }
        return grid;
    }

    /// <summary>
    /// numpy's <c>linspace(start, stop, num)[i]</c>: <c>start + i·step</c> with <c>step = (stop − start)/(num − 1)</c>,
    /// and the last entry set to <c>stop</c> exactly.
    /// </summary>
    internal static double Linspace(double start, double stop, int num, int i)
    {
        if (num == 1) return start;
        if (i == num - 1) return stop;
        double step = (stop - start) / (num - 1);
        return start + i * step;
    }

    /// <summary>An explicit grid (e.g. a distilled student's few-step schedule such as {1, 0.5, 0}).</summary>
    /// <exception cref="ArgumentException">Fewer than two points, a value outside [0, 1] or not finite, or not strictly decreasing.</exception>
    public static double[] Explicit(params double[] times)
    {
        Validate(times, nameof(times));
        return (double[])times.Clone();
    }

    /// <summary>Checks that <paramref name="grid"/> is a usable time grid.</summary>
    /// <exception cref="ArgumentException">Fewer than two points, a value outside [0, 1] or not finite, or not strictly decreasing.</exception>
    public static void Validate(IReadOnlyList<double> grid, string argumentName)
    {
        ArgumentNullException.ThrowIfNull(grid, argumentName);
        if (grid.Count < 2) throw new ArgumentException($"a time grid needs at least 2 points (1 step), got {grid.Count}.", argumentName);
        for (int i = 0; i < grid.Count; i++)
        {
            if (!double.IsFinite(grid[i]) || grid[i] < 0 || grid[i] > 1)
                throw new ArgumentException($"time grid value [{i}] = {grid[i]} is outside [0, 1].", argumentName);
            if (i > 0 && !(grid[i] < grid[i - 1]))
                throw new ArgumentException($"a time grid must be strictly decreasing; [{i - 1}] = {grid[i - 1]}, [{i}] = {grid[i]}.", argumentName);
        }
    }
}
