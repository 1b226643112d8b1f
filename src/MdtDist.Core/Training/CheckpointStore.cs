using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using MdtDist.Core.IO;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>File names inside a distillation checkpoint folder.</summary>
internal static class CheckpointFiles
{
    public const string Manifest = "manifest.json";
    public const string Student = "student.safetensors";
    public const string Master = "master.safetensors";
    public const string Optimizer = "optimizer.bin";
    public const string State = "state.safetensors";
    public const string Trainer = "trainer.json";
    public static string Ema(int index) => $"ema-{index}.safetensors";
}

/// <summary>The scalar trainer state of a checkpoint (trainer.json).</summary>
internal sealed class CheckpointInfo
{
    public int FormatVersion { get; set; } = 1;
    public long Step { get; set; }
    public long SkippedSteps { get; set; }
    public double LogLossScale { get; set; }
    public long Seed { get; set; }
    public double[] EmaRates { get; set; } = Array.Empty<double>();
    public string Precision { get; set; } = "";
    public bool HasClipper { get; set; }
    public double? ClipCurrentMaxNorm { get; set; }
    public int ClipBufferPosition { get; set; }
    public int ClipBufferLength { get; set; }
    public string[] ParameterNames { get; set; } = Array.Empty<string>();
}

internal sealed class ManifestEntry
{
    public string Name { get; set; } = "";
    public long Bytes { get; set; }
    public string Sha256 { get; set; } = "";
}

internal sealed class CheckpointManifest
{
    public long Step { get; set; }
    public List<ManifestEntry> Files { get; set; } = new();
}

/// <summary>Safetensors contents loaded for a restore, disposed together.</summary>
internal sealed class LoadedTensors : IDisposable
{
    public LoadedTensors(string path)
    {
        Path = path;
        Tensors = SafeTensors.Load(path);
    }

    public string Path { get; }
    public Dictionary<string, Tensor> Tensors { get; }

    public Tensor Get(string name) =>
        Tensors.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"checkpoint file '{Path}' has no tensor '{name}'.");

    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
    }
}

/// <summary>Writes one checkpoint into a hidden temporary folder and renames it into place on <see cref="Commit"/>.</summary>
internal sealed class CheckpointWriter
{
    private readonly string _directory;
    private readonly string _temp;
    private readonly long _step;
    private readonly Action<string>? _onFile;
    private readonly List<string> _files = new();

    public CheckpointWriter(string directory, long step, Action<string>? onFileWritten)
    {
        _directory = System.IO.Path.GetFullPath(directory);
        Directory.CreateDirectory(_directory);
        _step = step;
        _onFile = onFileWritten;
        _temp = System.IO.Path.Combine(_directory, $".tmp-{CheckpointStore.FolderName(step)}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_temp);
    }

    public void WriteTensors(string name, IReadOnlyDictionary<string, Tensor> tensors)
    {
        SafeTensors.Save(System.IO.Path.Combine(_temp, name), tensors);
        Written(name);
    }

    public void WriteBytes(string name, byte[] bytes)
    {
        CheckpointStore.WriteDurable(System.IO.Path.Combine(_temp, name), bytes);
        Written(name);
    }

    public void WriteJson<T>(string name, T value) => WriteBytes(name, JsonSerializer.SerializeToUtf8Bytes(value, CheckpointStore.Json));

    private void Written(string name)
    {
        _files.Add(name);
        _onFile?.Invoke(name);
    }

    /// <summary>Writes the manifest (last), renames the folder into place and returns its final path.</summary>
    public string Commit()
    {
        var manifest = new CheckpointManifest { Step = _step };
        foreach (var f in _files)
        {
            var p = System.IO.Path.Combine(_temp, f);
            manifest.Files.Add(new ManifestEntry { Name = f, Bytes = new FileInfo(p).Length, Sha256 = CheckpointStore.Hash(p) });
        }
        CheckpointStore.WriteDurable(System.IO.Path.Combine(_temp, CheckpointFiles.Manifest), JsonSerializer.SerializeToUtf8Bytes(manifest, CheckpointStore.Json));
        var final = System.IO.Path.Combine(_directory, CheckpointStore.FolderName(_step));
        if (Directory.Exists(final))
        {
            // Re-saving the same step: move the old folder aside first so that a complete checkpoint of this step exists at every moment.
            var old = System.IO.Path.Combine(_directory, $".old-{CheckpointStore.FolderName(_step)}-{Guid.NewGuid():N}");
            Directory.Move(final, old);
            Directory.Move(_temp, final);
            Directory.Delete(old, recursive: true);
        }
        else
        {
            Directory.Move(_temp, final);
        }
        return final;
    }
}

/// <summary>Finds, verifies and prunes distillation checkpoints (folders <c>step-NNNNNNNNN</c> with a manifest).</summary>
public static class CheckpointStore
{
    private static readonly Regex StepFolder = new(@"^step-(\d+)$", RegexOptions.CultureInvariant);

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    internal static string FolderName(long step) => "step-" + step.ToString("D9", CultureInfo.InvariantCulture);

    /// <summary>
    /// The newest checkpoint folder under <paramref name="directory"/> whose manifest exists and whose files have the
    /// sizes it lists (hashes are checked on load), or null. Temporary folders of interrupted writes are ignored.
    /// </summary>
    public static string? FindLatest(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) return null;
        var candidates = Directory.GetDirectories(directory)
            .Select(d => (Path: d, Match: StepFolder.Match(System.IO.Path.GetFileName(d))))
            .Where(x => x.Match.Success)
            .Select(x => (x.Path, Step: long.Parse(x.Match.Groups[1].Value, CultureInfo.InvariantCulture)))
            .OrderByDescending(x => x.Step);
        foreach (var (path, _) in candidates)
            if (IsComplete(path, checkHashes: false)) return path;
        return null;
    }

    /// <summary>Lists the complete checkpoints under <paramref name="directory"/>, oldest first.</summary>
    public static IReadOnlyList<string> List(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) return Array.Empty<string>();
        return Directory.GetDirectories(directory)
            .Select(d => (Path: d, Match: StepFolder.Match(System.IO.Path.GetFileName(d))))
            .Where(x => x.Match.Success && IsComplete(x.Path, checkHashes: false))
            .OrderBy(x => long.Parse(x.Match.Groups[1].Value, CultureInfo.InvariantCulture))
            .Select(x => x.Path)
            .ToList();
    }

    /// <summary>Checks that every file of the checkpoint matches its manifest (size and SHA-256).</summary>
    /// <exception cref="InvalidDataException">The checkpoint is incomplete or corrupt.</exception>
    public static void Verify(string checkpoint)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpoint);
        var problem = Problem(checkpoint, checkHashes: true);
        if (problem is not null) throw new InvalidDataException($"checkpoint '{checkpoint}' is not usable: {problem}.");
    }

    internal static bool IsComplete(string checkpoint, bool checkHashes) => Problem(checkpoint, checkHashes) is null;

    private static string? Problem(string checkpoint, bool checkHashes)
    {
        var manifestPath = System.IO.Path.Combine(checkpoint, CheckpointFiles.Manifest);
        if (!File.Exists(manifestPath)) return "no manifest (the write did not finish)";
        CheckpointManifest? manifest;
        try { manifest = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllBytes(manifestPath), Json); }
        catch (JsonException e) { return "unreadable manifest: " + e.Message; }
        if (manifest is null || manifest.Files.Count == 0) return "empty manifest";
        foreach (var f in manifest.Files)
        {
            var p = System.IO.Path.Combine(checkpoint, f.Name);
            if (!File.Exists(p)) return $"file '{f.Name}' is missing";
            long len = new FileInfo(p).Length;
            if (len != f.Bytes) return $"file '{f.Name}' has {len} bytes, the manifest says {f.Bytes}";
            if (checkHashes && !string.Equals(Hash(p), f.Sha256, StringComparison.OrdinalIgnoreCase)) return $"file '{f.Name}' does not match its SHA-256";
        }
        return null;
    }

    /// <summary>Deletes all but the newest <paramref name="keep"/> complete checkpoints and leftovers of interrupted writes.</summary>
    public static void Prune(string directory, int keep)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (keep < 1) throw new ArgumentException($"keep must be >= 1, got {keep}.", nameof(keep));
        if (!Directory.Exists(directory)) return;
        var all = List(directory);
        foreach (var old in all.Take(Math.Max(0, all.Count - keep))) Directory.Delete(old, recursive: true);
        foreach (var d in Directory.GetDirectories(directory))
        {
            var name = System.IO.Path.GetFileName(d);
            if (name.StartsWith(".tmp-step-", StringComparison.Ordinal) || name.StartsWith(".old-step-", StringComparison.Ordinal))
            {
                try { Directory.Delete(d, recursive: true); }
                catch (IOException) { /* another writer may be using it; left for a later prune */ }
            }
        }
    }

    internal static T ReadJson<T>(string path) =>
        JsonSerializer.Deserialize<T>(File.ReadAllBytes(path), Json) ?? throw new InvalidDataException($"'{path}' is empty.");

    internal static string Hash(string path)
    {
        using var fs = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(fs));
    }

    internal static void WriteDurable(string path, byte[] bytes)
    {
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write);
        fs.Write(bytes);
        fs.Flush(flushToDisk: true);
    }
}
