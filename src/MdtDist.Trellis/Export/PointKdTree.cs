namespace MdtDist.Trellis.Export;

/// <summary>
/// Exact nearest-point queries over a fixed set of 3-D points: a k-d tree laid out in place over an index array (each
/// node is a range of it, split at its median along the range's widest axis; ranges of at most <see cref="Leaf"/>
/// points are scanned). Distances are computed in float64; among points at the same distance the lowest index wins, so
/// the answer equals a brute-force argmin over the points in index order. Queries are thread-safe.
/// </summary>
/// <remarks>Written here because none of the project's dependencies has a spatial index, and this one is small.</remarks>
internal sealed class PointKdTree
{
    private const int Leaf = 8;
    private readonly double[] _xyz;    // point i at 3i .. 3i + 2
    private readonly int[] _order;     // a permutation of the points: the tree's ranges
    private readonly byte[] _axis;     // split axis of the node whose median sits at that position of _order
    private readonly double[] _min = new double[3], _max = new double[3];   // the points' bounding box

    /// <summary>Indexes <paramref name="xyz"/> (x, y, z of point i at 3i … 3i + 2; every value finite).</summary>
    public PointKdTree(double[] xyz)
    {
        ArgumentNullException.ThrowIfNull(xyz);
        if (xyz.Length % 3 != 0) throw new ArgumentException($"expected 3 values per point, found {xyz.Length} values.", nameof(xyz));
        _xyz = xyz;
        Count = xyz.Length / 3;
        _order = new int[Count];
        for (int i = 0; i < Count; i++) _order[i] = i;
        _axis = new byte[Count];
        Bounds(0, Count, _min, _max);
        Build(0, Count);
    }

    /// <summary>Number of points.</summary>
    public int Count { get; }

    /// <summary>The index of the point nearest to (<paramref name="x"/>, <paramref name="y"/>, <paramref name="z"/>), or -1 when there are no points.</summary>
    public int Nearest(double x, double y, double z)
    {
        int best = -1;
        double bestD2 = double.PositiveInfinity;
        if (Count == 0) return -1;
        // per axis: how far the query lies outside the current node's region (at the root: outside the bounding box)
        Span<double> offset = stackalloc double[] { Outside(x, 0), Outside(y, 1), Outside(z, 2) };
        Search(0, Count, x, y, z, offset, offset[0] * offset[0] + offset[1] * offset[1] + offset[2] * offset[2], ref best, ref bestD2);
        return best;
    }

    private void Build(int lo, int hi)
    {
        while (hi - lo > Leaf)
        {
            int axis = WidestAxis(lo, hi);
            int mid = (lo + hi) >> 1;
            Select(lo, hi, mid, axis);
            _axis[mid] = (byte)axis;
            Build(lo, mid);
            lo = mid + 1;
        }
    }

    private double Outside(double v, int axis) => v < _min[axis] ? _min[axis] - v : v > _max[axis] ? v - _max[axis] : 0;

    private int WidestAxis(int lo, int hi)
    {
        Span<double> min = stackalloc double[3], max = stackalloc double[3];
        Bounds(lo, hi, min, max);
        double e0 = max[0] - min[0], e1 = max[1] - min[1], e2 = max[2] - min[2];
        return e0 >= e1 ? (e0 >= e2 ? 0 : 2) : (e1 >= e2 ? 1 : 2);
    }

    private void Bounds(int lo, int hi, Span<double> min, Span<double> max)
    {
        min.Fill(double.PositiveInfinity);
        max.Fill(double.NegativeInfinity);
        for (int i = lo; i < hi; i++)
        {
            int p = 3 * _order[i];
            for (int a = 0; a < 3; a++)
            {
                double v = _xyz[p + a];
                if (v < min[a]) min[a] = v;
                if (v > max[a]) max[a] = v;
            }
        }
    }

    /// <summary>Reorders _order[lo, hi) so that position k holds the element of rank k along <paramref name="axis"/>
    /// (quickselect with a three-way partition: linear on average, also when many coordinates are equal).</summary>
    private void Select(int lo, int hi, int k, int axis)
    {
        var rng = new Random(lo ^ (hi << 8));   // deterministic pivots
        while (hi - lo > 1)
        {
            double pivot = Key(_order[lo + rng.Next(hi - lo)], axis);
            int lt = lo, i = lo, gt = hi;   // [lo, lt) < pivot, [lt, i) == pivot, [gt, hi) > pivot
            while (i < gt)
            {
                double v = Key(_order[i], axis);
                if (v < pivot)
                {
                    (_order[lt], _order[i]) = (_order[i], _order[lt]);
                    lt++;
                    i++;
                }
                else if (v > pivot)
                {
                    gt--;
                    (_order[gt], _order[i]) = (_order[i], _order[gt]);
                }
                else i++;
            }
            if (k < lt) hi = lt;
            else if (k >= gt) lo = gt;
            else return;
        }
    }

    private double Key(int point, int axis) => _xyz[3 * point + axis];

    /// <summary>
    /// Visits the node [lo, hi) whose region lies at squared distance at least <paramref name="regionD2"/> from the query
    /// (the sum of the squared per-axis <paramref name="offset"/>s: a lower bound from the split planes crossed on the way
    /// down, which keeps far queries from visiting every node).
    /// </summary>
    private void Search(int lo, int hi, double x, double y, double z, Span<double> offset, double regionD2, ref int best, ref double bestD2)
    {
        if (hi - lo <= Leaf)
        {
            for (int i = lo; i < hi; i++) Consider(_order[i], x, y, z, ref best, ref bestD2);
            return;
        }
        int mid = (lo + hi) >> 1;
        int axis = _axis[mid];
        int p = _order[mid];
        Consider(p, x, y, z, ref best, ref bestD2);
        double diff = (axis == 0 ? x : axis == 1 ? y : z) - Key(p, axis);
        bool leftFirst = diff < 0;
        if (leftFirst) Search(lo, mid, x, y, z, offset, regionD2, ref best, ref bestD2);
        else Search(mid + 1, hi, x, y, z, offset, regionD2, ref best, ref bestD2);
        // the other side lies beyond the split plane: at least |diff| away along this axis (replacing the bound this axis
        // had). The bound is rounded differently from the distances, so it is lowered by far more than its few ulps of
        // error before the test; with <= that keeps points at exactly the best distance (a lower index wins) reachable
        double old = offset[axis];
        double farD2 = regionD2 - old * old + diff * diff;
        if (farD2 * (1 - 1e-12) <= bestD2)
        {
            offset[axis] = diff;
            if (leftFirst) Search(mid + 1, hi, x, y, z, offset, farD2, ref best, ref bestD2);
            else Search(lo, mid, x, y, z, offset, farD2, ref best, ref bestD2);
            offset[axis] = old;
        }
    }

    private void Consider(int point, double x, double y, double z, ref int best, ref double bestD2)
    {
        int p = 3 * point;
        double dx = _xyz[p] - x, dy = _xyz[p + 1] - y, dz = _xyz[p + 2] - z;
        double d2 = dx * dx + dy * dy + dz * dz;
        if (d2 < bestD2 || (d2 == bestD2 && point < best))
        {
            bestD2 = d2;
            best = point;
        }
    }
}
