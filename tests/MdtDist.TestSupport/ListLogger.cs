using Microsoft.Extensions.Logging;

namespace MdtDist.TestSupport;

/// <summary>An <see cref="ILogger"/> that keeps every entry (level and formatted message) for a test to inspect; thread-safe.</summary>
public sealed class ListLogger : ILogger
{
    private readonly List<(LogLevel Level, string Message)> _entries = new();

    /// <summary>A snapshot of the entries so far, in order.</summary>
    public IReadOnlyList<(LogLevel Level, string Message)> Entries
    {
        get { lock (_entries) return _entries.ToArray(); }
    }

    /// <summary>The messages of <see cref="Entries"/>.</summary>
    public IReadOnlyList<string> Lines => Entries.Select(e => e.Message).ToArray();

    /// <inheritdoc />
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    /// <inheritdoc />
    public bool IsEnabled(LogLevel logLevel) => true;

    /// <inheritdoc />
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (_entries) _entries.Add((logLevel, formatter(state, exception)));
    }
}
