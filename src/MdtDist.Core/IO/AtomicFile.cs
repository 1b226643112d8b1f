namespace MdtDist.Core.IO;

/// <summary>Writes a file through a temporary file in the same folder and a rename, so a reader (or a crash) never leaves a partial file.</summary>
internal static class AtomicFile
{
    /// <summary>
    /// Creates the folder of <paramref name="path"/> if needed, lets <paramref name="write"/> fill a temporary file next
    /// to it, flushes it to disk and renames it over <paramref name="path"/>. The temporary file is removed on failure.
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, "." + Path.GetFileName(full) + "." + Guid.NewGuid().ToString("N") + ".tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
