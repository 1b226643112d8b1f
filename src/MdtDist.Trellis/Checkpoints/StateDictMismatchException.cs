namespace MdtDist.Trellis.Checkpoints;

/// <summary>A tensor whose stored shape differs from the network's.</summary>
/// <param name="Name">State-dict name.</param>
/// <param name="Expected">Shape the network has.</param>
/// <param name="Found">Shape in the file.</param>
public sealed record ShapeMismatch(string Name, long[] Expected, long[] Found)
{
    /// <inheritdoc />
    public override string ToString() => $"{Name}: expected [{string.Join(", ", Expected)}], found [{string.Join(", ", Found)}]";
}

/// <summary>
/// A state dict does not match a network: lists every missing, unexpected and mis-shaped tensor (by name, with
/// expected vs found shapes) in one message. Thrown before any weight is copied.
/// </summary>
public sealed class StateDictMismatchException : Exception
{
    /// <summary>Creates the exception.</summary>
    public StateDictMismatchException(string source, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected, IReadOnlyList<ShapeMismatch> mismatched,
        IReadOnlyList<string>? wrongDType = null)
        : base(Format(source, missing, unexpected, mismatched, wrongDType ?? Array.Empty<string>()))
    {
        WrongDType = wrongDType ?? Array.Empty<string>();
        Origin = source;
        Missing = missing;
        Unexpected = unexpected;
        Mismatched = mismatched;
    }

    /// <summary>Where the state dict came from (a file path or a description).</summary>
    public string Origin { get; }

    /// <summary>Tensors the network has and the state dict lacks.</summary>
    public IReadOnlyList<string> Missing { get; }

    /// <summary>Tensors in the state dict the network does not have.</summary>
    public IReadOnlyList<string> Unexpected { get; }

    /// <summary>Tensors present in both with different shapes.</summary>
    public IReadOnlyList<ShapeMismatch> Mismatched { get; }

    /// <summary>Tensors whose stored dtype cannot be loaded into the network's tensor (e.g. integers into a float parameter), with both dtypes.</summary>
    public IReadOnlyList<string> WrongDType { get; }

    private static string Format(string source, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected, IReadOnlyList<ShapeMismatch> mismatched, IReadOnlyList<string> wrongDType)
    {
        var lines = new List<string>
        {
            $"state dict from {source} does not match the network ({missing.Count} missing, {unexpected.Count} unexpected, {mismatched.Count} mis-shaped{(wrongDType.Count > 0 ? $", {wrongDType.Count} of the wrong dtype" : "")}):",
        };
        if (missing.Count > 0) lines.Add("  missing: " + string.Join(", ", missing));
        if (unexpected.Count > 0) lines.Add("  unexpected: " + string.Join(", ", unexpected));
        foreach (var m in mismatched) lines.Add("  shape mismatch: " + m);
        foreach (var d in wrongDType) lines.Add("  dtype mismatch: " + d);
        return string.Join(Environment.NewLine, lines);
    }
}
