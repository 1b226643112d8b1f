using Xunit;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Data-driven parity against the reference PyTorch TRELLIS / MDT-dist code: every manifest (*.json) in the golden
/// folder is one case. MDTDIST_GOLDEN_DIR points at another folder of files in the same format; MDTDIST_GOLDEN_CASES
/// (comma-separated manifest 'family' values) narrows the run. A case no runner can run fails; it never skips.
/// </summary>
public class GoldenParityTests
{
    /// <summary>The golden data shipped with this test project (unit tests that reuse golden inputs read it, not the override).</summary>
    public static string BundledDirectory => Path.Combine(AppContext.BaseDirectory, "golden");

    public static string GoldenDirectory =>
        Environment.GetEnvironmentVariable("MDTDIST_GOLDEN_DIR") is { Length: > 0 } d ? d : Path.Combine(AppContext.BaseDirectory, "golden");

    public static IEnumerable<object[]> Cases()
    {
        var dir = GoldenDirectory;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"golden folder '{dir}' does not exist");
        var families = Environment.GetEnvironmentVariable("MDTDIST_GOLDEN_CASES") is { Length: > 0 } f
            ? f.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet()
            : null;
        foreach (var manifest in Directory.GetFiles(dir, "*.json").OrderBy(p => p, StringComparer.Ordinal))
        {
            if (families != null)
            {
                using var c = new GoldenCase(manifest);
                if (!families.Contains(c.Family)) continue;
            }
            yield return new object[] { Path.GetFileNameWithoutExtension(manifest) };
        }
    }

    private static readonly IReadOnlyList<IGoldenRunner> Runners = typeof(GoldenParityTests).Assembly.GetTypes()
        .Where(t => typeof(IGoldenRunner).IsAssignableFrom(t) && !t.IsAbstract && !t.IsInterface)
        .Select(t => (IGoldenRunner)Activator.CreateInstance(t)!)
        .ToList();

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string caseName) => RunCase(Path.Combine(GoldenDirectory, caseName + ".json"));

    /// <summary>Runs the case of <paramref name="manifestPath"/> with the one runner that claims it and checks that every
    /// tensor of its file was accounted for.</summary>
    internal static void RunCase(string manifestPath)
    {
        using var c = new GoldenCase(manifestPath);
        var claim = Runners.Where(r => r.CanRun(c)).ToList();
        Assert.True(claim.Count == 1,
            claim.Count == 0
                ? $"no golden runner can run case '{c.Name}' (family {c.Family}, entry point {c.EntryPoint})"
                : $"case '{c.Name}' is claimed by several runners: {string.Join(", ", claim.Select(r => r.GetType().Name))}");
        claim[0].Run(c);
        c.AssertAccountedFor();
    }
}
