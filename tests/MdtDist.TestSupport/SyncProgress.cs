namespace MdtDist.TestSupport;

/// <summary>An <see cref="IProgress{T}"/> that calls its action on the reporting thread (unlike <see cref="Progress{T}"/>,
/// which posts to a synchronisation context), so a test sees every report before the call returns.</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    /// <inheritdoc />
    public void Report(T value) => report(value);
}
