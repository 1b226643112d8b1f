namespace MdtDist.Trellis.Data;

/// <summary>How TRELLIS forms and splits training batches.</summary>
public static class TrellisBatching
{
    /// <summary>
    /// TRELLIS's <c>load_balanced_group_indices</c>: items are taken from the largest load down (numpy's argsort
    /// reversed: for equal loads the later index first), each into the group whose load is smallest so far (the first
    /// such group on ties). With <paramref name="equalSize"/>, a group that reaches <c>count / groups</c> items is
    /// closed. Returns the item indices of each group in the order they were added.
    /// </summary>
    /// <remarks>numpy's default argsort is stable for the batch sizes used in training (insertion sort below 16 items);
    /// this port is stable for every size.</remarks>
    /// <exception cref="ArgumentException"><paramref name="groups"/> &lt; 1, more groups than items, or a negative load.</exception>
    public static IReadOnlyList<IReadOnlyList<int>> LoadBalancedGroups(IReadOnlyList<long> loads, int groups, bool equalSize = false)
    {
        ArgumentNullException.ThrowIfNull(loads);
        if (groups < 1 || groups > loads.Count)
            throw new ArgumentException($"cannot split {loads.Count} items into {groups} groups.", nameof(groups));
        if (loads.Any(l => l < 0)) throw new ArgumentException("loads must be non-negative.", nameof(loads));
        int groupSize = loads.Count / groups;
        var order = Enumerable.Range(0, loads.Count).OrderBy(i => loads[i]).ToList(); // stable ascending
        order.Reverse();
        var result = new List<List<int>>();
        for (int g = 0; g < groups; g++) result.Add(new List<int>());
        var load = new double[groups];
        foreach (var idx in order)
        {
            int min = 0;
            for (int g = 1; g < groups; g++) if (load[g] < load[min]) min = g;
            result[min].Add(idx);
            if (equalSize && result[min].Count == groupSize) load[min] = double.PositiveInfinity;
            else load[min] += loads[idx];
        }
        return result;
    }
}
