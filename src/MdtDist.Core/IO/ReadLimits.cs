namespace MdtDist.Core.IO;

/// <summary>
/// The bound on what a file may make MdtDist's readers allocate. Every reader checks the memory an input would make it
/// allocate (tensors of a weights file, the vertices of a <c>.ply</c>, the network a checkpoint config describes)
/// against <see cref="MaxAllocationBytes"/> before allocating, and rejects a file that exceeds it with an
/// <see cref="InvalidDataException"/> naming the file and the bound. The default (64 GiB) admits every released TRELLIS
/// model in float64; raise it for genuinely larger models, lower it for services that read untrusted files.
/// </summary>
public static class ReadLimits
{
    /// <summary>The default bound: 64 GiB.</summary>
    public const long DefaultMaxAllocationBytes = 64L << 30;

    private static long _max = DefaultMaxAllocationBytes;
    private static readonly AsyncLocal<long?> Scoped = new();

    /// <summary>The most bytes one file may make a reader allocate: the innermost <see cref="Scope"/> of the current
    /// async flow, or else the process-wide value set here.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Set to a value below 1.</exception>
    public static long MaxAllocationBytes
    {
        get => Scoped.Value ?? Volatile.Read(ref _max);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1L);
            Volatile.Write(ref _max, value);
        }
    }

    /// <summary>Sets the bound for the current thread / async flow only, until the returned object is disposed.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxAllocationBytes"/> is below 1.</exception>
    public static IDisposable Scope(long maxAllocationBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxAllocationBytes, 1L);
        var previous = Scoped.Value;
        Scoped.Value = maxAllocationBytes;
        return new Restore(previous);
    }

    private sealed class Restore(long? previous) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            Scoped.Value = previous;
        }
    }

    /// <summary>Throws when <paramref name="bytes"/> exceeds the bound; <paramref name="what"/> names the file and the cause.</summary>
    /// <exception cref="InvalidDataException">Over the bound (or negative, i.e. an overflow).</exception>
    public static void Check(long bytes, Func<string> what)
    {
        long max = MaxAllocationBytes;
        if (bytes < 0 || bytes > max)
            throw new InvalidDataException($"{what()}: {(bytes < 0 ? "more than 2^63" : bytes.ToString(System.Globalization.CultureInfo.InvariantCulture))} bytes, "
                + $"over the allocation bound of {max} bytes (MdtDist.Core.IO.{nameof(ReadLimits)}.{nameof(MaxAllocationBytes)}; raise it for genuinely larger models).");
    }

    /// <summary>Multiplies non-negative factors, returning -1 on overflow.</summary>
    public static long Product(params long[] factors)
    {
        long r = 1;
        foreach (var f in factors)
        {
            if (f < 0) return -1;
            if (f != 0 && r > long.MaxValue / f) return -1;
            r *= f;
        }
        return r;
    }
}
