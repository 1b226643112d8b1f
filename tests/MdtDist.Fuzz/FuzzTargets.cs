using MdtDist.Fuzz.Targets;

namespace MdtDist.Fuzz;

/// <summary>
/// The registry of fuzz targets: one per public file reader. To add a reader, write a <see cref="FuzzTarget"/>
/// subclass (seeds, mutation weights, the reading call, its documented exceptions) and add it here; the campaign,
/// the xunit test (which enumerates this list) and the SharpFuzz entry points pick it up by name.
/// </summary>
public static class FuzzTargets
{
    /// <summary>Every registered target, in report order.</summary>
    public static IReadOnlyList<FuzzTarget> All { get; } = new FuzzTarget[]
    {
        new SafeTensorsTarget(),
        new GaussianPlyTarget(),
        new TrellisCheckpointTarget(),
        new PipelineFolderTarget(),
        new TrainingCheckpointTarget(),
    };

    /// <summary>The target named <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">No such target.</exception>
    public static FuzzTarget Get(string name) =>
        All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"no fuzz target '{name}'; known: {string.Join(", ", All.Select(t => t.Name))}.", nameof(name));
}
