namespace MdtDist.TestSupport;

/// <summary>
/// Gives a test process its own temporary folder and removes it when the process ends. Tests create their scratch
/// files with <see cref="Path.GetTempPath"/> / <see cref="Directory.CreateTempSubdirectory(string)"/>, which on Unix
/// read <c>TMPDIR</c> on every call; pointing <c>TMPDIR</c> at a per-process folder keeps every file a test (or a child
/// process it starts, which inherits the variable) writes in one place that is deleted at exit, so repeated test runs
/// do not fill the disk.
/// </summary>
public static class TestTempRoot
{
    private static readonly object Gate = new();
    private static string? _root;

    /// <summary>The folder, created on the first call; idempotent.</summary>
    public static string Install()
    {
        lock (Gate)
        {
            if (_root is not null) return _root;
            string parent = Path.GetTempPath();
            _root = Path.Combine(parent, $"mdtdist-tests-{Environment.ProcessId}-{Guid.NewGuid():N}");
            Directory.CreateDirectory(_root);
            Environment.SetEnvironmentVariable("TMPDIR", _root);
            string root = _root;
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                try { Directory.Delete(root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            };
            return _root;
        }
    }
}
