using System.Diagnostics;
using MdtDist.Core.Training;
using TorchSharp;

namespace MdtDist.Fuzz;

/// <summary>Generates, writes and reads inputs inside one (child) process, and classifies what the reader did.</summary>
public static class InputRunner
{
    /// <summary>The input <paramref name="index"/> of a campaign with <paramref name="seed"/>: the same on every machine.</summary>
    public static FuzzCase Generate(FuzzTarget target, int seed, int index) => target.Generate(new Random(InputSeed(target.Name, seed, index)));

    /// <summary>FNV-1a over the target name, the campaign seed and the index (HashCode is randomised per process, so it cannot serve).</summary>
    public static int InputSeed(string target, int seed, int index)
    {
        ulong h = 14695981039346656037UL;
        void Mix(byte b) { h ^= b; h *= 1099511628211UL; }
        foreach (var ch in target) { Mix((byte)ch); Mix((byte)(ch >> 8)); }
        foreach (var v in new[] { seed, index })
            for (int k = 0; k < 4; k++) Mix((byte)(v >> (8 * k)));
        return (int)(h ^ (h >> 32)) & int.MaxValue;
    }

    /// <summary>The process's resident-set peak, reset before each input.</summary>
    private static readonly ProcessPeakMemory PeakMeter = new();

    /// <summary>Runs the reader on <paramref name="c"/> in folder <paramref name="folder"/> and classifies the result.</summary>
    /// <param name="boundBytes">The allocation bound: peak resident memory above the level before the input, and managed allocations.</param>
    public static InputResult RunOne(FuzzTarget target, FuzzCase c, int index, string folder, long boundBytes)
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        c.WriteTo(folder);
        var mutations = string.Join("; ", c.Mutations);
        PeakMeter.ResetPeak();
        long rssBefore = ProcessPeakMemory.ResidentBytes;
        long gcBefore = GC.GetTotalAllocatedBytes(precise: false);
        var sw = Stopwatch.StartNew();
        Exception? error = null;
        try
        {
            using var scope = torch.NewDisposeScope();
            target.Read(folder, c);
        }
        catch (Exception e)
        {
            error = e;
        }
        sw.Stop();
        long peak = PeakMeter.PeakBytes;
        long managed = GC.GetTotalAllocatedBytes(precise: false) - gcBefore;
        double peakMb = Math.Max(0, peak - rssBefore) / (1024.0 * 1024.0);
        try { Directory.Delete(folder, recursive: true); } catch (IOException) { }
        double ms = sw.Elapsed.TotalMilliseconds;

        Outcome outcome;
        string detail;
        if (error is OutOfMemoryException || (error is not null && IsNativeOom(error)))
        {
            outcome = Outcome.OverBound;
            detail = $"{error.GetType().Name}: {error.Message}";
        }
        else if ((peak >= 0 && peak - rssBefore > boundBytes) || managed > boundBytes)
        {
            outcome = Outcome.OverBound;
            detail = $"peak +{peakMb:F0} MiB resident, {managed / (1024 * 1024)} MiB managed allocations (bound {boundBytes / (1024 * 1024)} MiB)";
        }
        else if (error is null)
        {
            outcome = c.MustReject ? Outcome.Silent : Outcome.Accepted;
            detail = c.MustReject ? "accepted although " + c.MustRejectReason : "";
        }
        else if (error is SilentlyAcceptedException)
        {
            outcome = Outcome.Silent;
            detail = error.Message;
        }
        else if (target.DocumentedExceptions.Any(t => t.IsInstanceOfType(error)) && NamesAFile(error.Message, folder, c))
        {
            outcome = Outcome.Rejected;
            detail = $"{error.GetType().Name}: {error.Message}";
        }
        else
        {
            outcome = Outcome.Unclean;
            var documented = target.DocumentedExceptions.Any(t => t.IsInstanceOfType(error)) ? " (documented type, but the message names no file)" : "";
            detail = $"{error.GetType().FullName}{documented}: {error.Message} @ {FirstFrame(error)}";
        }
        if (detail.Length > 600) detail = detail[..600] + "…";
        if (outcome is not (Outcome.Accepted or Outcome.Rejected)) detail += " | input: " + mutations;
        return new InputResult(index, outcome, ms, peakMb, detail);
    }

    private static bool NamesAFile(string message, string folder, FuzzCase c) =>
        message.Contains(folder, StringComparison.Ordinal)
        || c.Files.Keys.Any(k => message.Contains(Path.GetFileName(k), StringComparison.Ordinal));

    private static bool IsNativeOom(Exception e) =>
        e.Message.Contains("can't allocate memory", StringComparison.OrdinalIgnoreCase)
        || e.Message.Contains("DefaultCPUAllocator", StringComparison.Ordinal)
        || e.Message.Contains("std::bad_alloc", StringComparison.Ordinal);

    private static string FirstFrame(Exception e)
    {
        var st = e.StackTrace;
        if (st is null) return "?";
        var line = st.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Contains("MdtDist", StringComparison.Ordinal)) ?? st.Split('\n')[0].Trim();
        return line.Length > 200 ? line[..200] : line;
    }
}
