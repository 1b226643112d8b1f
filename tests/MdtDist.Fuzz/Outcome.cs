namespace MdtDist.Fuzz;

/// <summary>What one input did to a reader.</summary>
public enum Outcome
{
    /// <summary>The reader accepted the input (fine unless the input is known invalid).</summary>
    Accepted,
    /// <summary>The reader rejected the input with a documented exception whose message names the file.</summary>
    Rejected,
    /// <summary>An undocumented exception, or a documented one whose message names no file of the input.</summary>
    Unclean,
    /// <summary>A known-invalid input was accepted.</summary>
    Silent,
    /// <summary>The reader allocated more than the bound, or ran out of memory under the cap.</summary>
    OverBound,
    /// <summary>The reader did not finish within the per-input timeout.</summary>
    Hang,
    /// <summary>The child process died on the input (native crash, abort, stack overflow).</summary>
    Crash,
}

/// <summary>The result of one input.</summary>
/// <param name="Index">Input index (with the seed, reproduces the input).</param>
/// <param name="Outcome">What happened.</param>
/// <param name="Milliseconds">Time taken by the reader.</param>
/// <param name="PeakMegabytes">Peak resident memory above the level before the input, in MiB (-1 when unknown).</param>
/// <param name="Detail">Exception type and message, or the mutations, one line.</param>
public sealed record InputResult(int Index, Outcome Outcome, double Milliseconds, double PeakMegabytes, string Detail)
{
    /// <summary>True for the outcomes that fail a campaign.</summary>
    public bool IsFailure => Outcome is not (Outcome.Accepted or Outcome.Rejected);

    /// <summary>The line a child prints for this result.</summary>
    public string ToLine() => string.Join('\t', "R", Index.ToString(System.Globalization.CultureInfo.InvariantCulture), Outcome.ToString(),
        Milliseconds.ToString("F1", System.Globalization.CultureInfo.InvariantCulture),
        PeakMegabytes.ToString("F1", System.Globalization.CultureInfo.InvariantCulture), Detail.Replace('\t', ' ').Replace('\n', ' ').Replace('\r', ' '));

    /// <summary>Parses a line written by <see cref="ToLine"/>; null for other lines.</summary>
    public static InputResult? Parse(string line)
    {
        var p = line.Split('\t', 6);
        if (p.Length != 6 || p[0] != "R") return null;
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        return new InputResult(int.Parse(p[1], inv), Enum.Parse<Outcome>(p[2]), double.Parse(p[3], inv), double.Parse(p[4], inv), p[5]);
    }
}
