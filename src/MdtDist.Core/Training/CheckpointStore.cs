using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using MdtDist.Core.IO;
using Microsoft.Extensions.Logging;
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
/// <remarks>Checked once deserialised (<see cref="OnDeserialized"/>): a hostile file may hold nulls or impossible values.</remarks>
internal sealed class CheckpointInfo : System.Text.Json.Serialization.IJsonOnDeserialized
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

    /// <summary>Rejects nulls and impossible values (as a <see cref="JsonException"/>, which the reader wraps with the file name).</summary>
    public void OnDeserialized()
    {
        if (ParameterNames is null || ParameterNames.Any(n => n is null)) throw new JsonException("\"ParameterNames\" is null or holds null.");
        if (EmaRates is null) throw new JsonException("\"EmaRates\" is null.");
        if (Precision is null) throw new JsonException("\"Precision\" is null.");
        if (Step < 0 || SkippedSteps < 0 || SkippedSteps > Step) throw new JsonException($"\"Step\" {Step} / \"SkippedSteps\" {SkippedSteps} are impossible.");
        if (!double.IsFinite(LogLossScale)) throw new JsonException($"\"LogLossScale\" is {LogLossScale}.");
        if (ClipBufferPosition < 0 || ClipBufferLength < 0 || ClipBufferPosition > ClipBufferLength)
            throw new JsonException($"\"ClipBufferPosition\" {ClipBufferPosition} / \"ClipBufferLength\" {ClipBufferLength} are impossible.");
        if (ClipCurrentMaxNorm is { } m && !(m >= 0)) throw new JsonException($"\"ClipCurrentMaxNorm\" is {m}.");
    }
}

internal sealed class ManifestEntry
{
    // Nullable: a hostile manifest may say "Name": null (checked in CheckpointStore.Problem).
    public string? Name { get; set; } = "";
    public long Bytes { get; set; }
    public string? Sha256 { get; set; } = "";
}

internal sealed class CheckpointManifest
{
    public long Step { get; set; }
    // Nullable: a hostile manifest may say "Files": null or list null entries.
    public List<ManifestEntry?>? Files { get; set; } = new();
}

/// <summary>Safetensors contents loaded for a restore, disposed together.</summary>
internal sealed class LoadedTensors : IDisposable
{
    public LoadedTensors(string path)
    {
        Path = path;
        if (!File.Exists(path)) throw new InvalidDataException($"checkpoint file '{path}' is missing.");
        Tensors = SafeTensors.Load(path);
    }

    public string Path { get; }
    public Dictionary<string, Tensor> Tensors { get; }

    /// <summary>Loads these tensors into <paramref name="module"/> (strict), after checking names and shapes.</summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or mis-shaped; the message names the file and the tensors.</exception>
    public void LoadInto(nn.Module module)
    {
        var expected = module.state_dict();
        var missing = expected.Keys.Where(k => !Tensors.ContainsKey(k)).ToList();
        var unexpected = Tensors.Keys.Where(k => !expected.ContainsKey(k)).ToList();
        var misshaped = expected.Where(kv => Tensors.TryGetValue(kv.Key, out var t) && (!t.shape.SequenceEqual(kv.Value.shape) || t.dtype != kv.Value.dtype))
            .Select(kv => $"{kv.Key} (expected [{string.Join(", ", kv.Value.shape)}] {kv.Value.dtype}, found [{string.Join(", ", Tensors[kv.Key].shape)}] {Tensors[kv.Key].dtype})").ToList();
        if (missing.Count + unexpected.Count + misshaped.Count > 0)
            throw new InvalidDataException($"checkpoint file '{Path}' does not fit the network: "
                + string.Join("; ", new[] { missing.Count > 0 ? "missing " + string.Join(", ", missing) : null, unexpected.Count > 0 ? "unexpected " + string.Join(", ", unexpected) : null,
                    misshaped.Count > 0 ? "mis-shaped " + string.Join(", ", misshaped) : null }.Where(x => x is not null)) + ".");
        module.load_state_dict(Tensors, strict: true);
    }

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
        var entries = new List<ManifestEntry?>();
        var manifest = new CheckpointManifest { Step = _step, Files = entries };
        foreach (var f in _files)
        {
            var p = System.IO.Path.Combine(_temp, f);
            entries.Add(new ManifestEntry { Name = f, Bytes = new FileInfo(p).Length, Sha256 = CheckpointStore.Hash(p) });
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

/// <summary>
/// Finds, verifies and prunes distillation checkpoints: folders <c>step-NNNNNNNNN</c>, each with a
/// <c>manifest.json</c> written last that lists every file with its size and SHA-256.
/// </summary>
/// <remarks>
/// What a crash, a kill or a damaged disk can leave is handled here: hidden folders of interrupted writes and prunes
/// are ignored and removed by <see cref="Prune"/>; a step folder without a complete manifest, with a file missing, of
/// the wrong size or with the wrong hash is skipped by <see cref="FindLatest(string, ILogger?)"/> (with a logged
/// warning) so a resume falls back to the previous valid checkpoint; folder names whose step does not fit in 64 bits
/// are ignored.
/// </remarks>
public static class CheckpointStore
{
    private static readonly Regex StepFolder = new(@"^step-([0-9]+)$", RegexOptions.CultureInvariant);

    /// <summary>The largest manifest read (a manifest lists a few files; anything larger is not one of ours).</summary>
    internal const long MaxManifestBytes = 1 << 20;

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    internal static string FolderName(long step) => "step-" + step.ToString("D9", CultureInfo.InvariantCulture);

    /// <summary>The step folders under <paramref name="directory"/> whose step fits in 64 bits, with their steps.</summary>
    private static IEnumerable<(string Path, long Step)> StepFolders(string directory) =>
        Directory.GetDirectories(directory)
            .Select(d => (Path: d, Match: StepFolder.Match(System.IO.Path.GetFileName(d))))
            .Where(x => x.Match.Success)
            .Select(x => (x.Path, Ok: long.TryParse(x.Match.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var step), Step: step))
            .Where(x => x.Ok)
            .Select(x => (x.Path, x.Step));

    /// <summary>
    /// The newest checkpoint folder under <paramref name="directory"/> whose manifest exists and whose files have the
    /// sizes it lists (hashes are checked on load), or null. Temporary folders of interrupted writes are ignored.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or empty.</exception>
    public static string? FindLatest(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) return null;
        foreach (var (path, _) in StepFolders(directory).OrderByDescending(x => x.Step))
            if (IsComplete(path, checkHashes: false)) return path;
        return null;
    }

    /// <summary>
    /// The newest checkpoint folder under <paramref name="directory"/> that passes <see cref="Verify"/> (manifest,
    /// sizes and SHA-256 of every file), or null. Newer folders that fail (a flipped byte, a truncated or missing
    /// file, a malformed manifest) are skipped with a warning on <paramref name="logger"/>, so a resume falls back to
    /// the previous valid checkpoint.
    /// </summary>
    /// <remarks>It also finishes deletions that a kill interrupted (hidden <c>.del-step-*</c> folders, which
    /// <see cref="Prune"/> renames a checkpoint to before deleting it), so a run that was killed while pruning after
    /// its last checkpoint leaves nothing behind once resumed.</remarks>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or empty.</exception>
    public static string? FindLatest(string directory, ILogger? logger)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) return null;
        foreach (var d in Directory.GetDirectories(directory, ".del-step-*")) TryDelete(d);
        foreach (var (path, _) in StepFolders(directory).OrderByDescending(x => x.Step))
        {
            var problem = Problem(path, checkHashes: true);
            if (problem is null) return path;
            logger?.LogWarning("Checkpoint {Path} is not usable ({Problem}); falling back to an older checkpoint.", path, problem);
        }
        return null;
    }

    /// <summary>Lists the complete checkpoints under <paramref name="directory"/> (manifest present, sizes as listed), oldest first.</summary>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or empty.</exception>
    public static IReadOnlyList<string> List(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) return Array.Empty<string>();
        return StepFolders(directory)
            .Where(x => IsComplete(x.Path, checkHashes: false))
            .OrderBy(x => x.Step)
            .Select(x => x.Path)
            .ToList();
    }

    /// <summary>Checks that every file of the checkpoint matches its manifest (size and SHA-256).</summary>
    /// <exception cref="ArgumentException"><paramref name="checkpoint"/> is null or empty.</exception>
    /// <exception cref="InvalidDataException">The checkpoint is incomplete or corrupt (the message names the folder and the file).</exception>
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
        try
        {
            if (new FileInfo(manifestPath).Length > MaxManifestBytes) return $"manifest is larger than {MaxManifestBytes} bytes";
            manifest = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllBytes(manifestPath), Json);
        }
        catch (JsonException e) { return "unreadable manifest: " + e.Message; }
        catch (IOException e) { return "unreadable manifest: " + e.Message; }
        catch (UnauthorizedAccessException e) { return "unreadable manifest: " + e.Message; }
        if (manifest is null) return "manifest is null";
        if (manifest.Files is null) return "manifest has no \"Files\" list";
        if (manifest.Files.Count == 0) return "empty manifest";
        var folderStep = StepFolder.Match(System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(checkpoint)));
        if (folderStep.Success && long.TryParse(folderStep.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var step) && step != manifest.Step)
            return $"manifest is for step {manifest.Step}, the folder for step {step}";
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < manifest.Files.Count; i++)
        {
            var f = manifest.Files[i];
            if (f is null) return $"manifest entry {i} is null";
            if (string.IsNullOrEmpty(f.Name)) return $"manifest entry {i} has no \"Name\"";
            if (f.Name != System.IO.Path.GetFileName(f.Name) || f.Name is "." or ".." || f.Name.Contains('\\'))
                return $"manifest entry {i} names '{f.Name}', which is not a file of this folder";
            if (!names.Add(f.Name)) return $"manifest lists '{f.Name}' twice";
            if (f.Bytes < 0) return $"manifest gives '{f.Name}' a negative size {f.Bytes}";
            var p = System.IO.Path.Combine(checkpoint, f.Name);
            if (!File.Exists(p)) return $"file '{f.Name}' is missing";
            long len = new FileInfo(p).Length;
            if (len != f.Bytes) return $"file '{f.Name}' has {len} bytes, the manifest says {f.Bytes}";
            if (checkHashes)
            {
                if (string.IsNullOrEmpty(f.Sha256)) return $"manifest has no SHA-256 for '{f.Name}'";
                string actual;
                try { actual = Hash(p); }
                catch (IOException e) { return $"file '{f.Name}' cannot be read: {e.Message}"; }
                if (!string.Equals(actual, f.Sha256, StringComparison.OrdinalIgnoreCase)) return $"file '{f.Name}' does not match its SHA-256";
            }
        }
        if (!names.Contains(CheckpointFiles.Trainer)) return $"manifest does not list {CheckpointFiles.Trainer}";
        return null;
    }

    /// <summary>
    /// Deletes all but the newest <paramref name="keep"/> complete checkpoints, incomplete step folders older than the
    /// newest complete one (what a kill during an earlier prune leaves), and leftovers of interrupted writes. Each
    /// folder is first renamed to a hidden name and then deleted, so a kill during pruning never leaves a step folder
    /// that looks like a checkpoint; the hidden leftovers are removed by the next prune.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or empty, or <paramref name="keep"/> is below 1.</exception>
    public static void Prune(string directory, int keep)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (keep < 1) throw new ArgumentException($"keep must be >= 1, got {keep}.", nameof(keep));
        if (!Directory.Exists(directory)) return;
        var folders = StepFolders(directory).OrderBy(x => x.Step).ToList();
        var complete = folders.Where(x => IsComplete(x.Path, checkHashes: false)).ToList();
        var doomed = complete.Take(Math.Max(0, complete.Count - keep)).Select(x => x.Path).ToList();
        if (complete.Count > 0)
        {
            long newest = complete[^1].Step;
            doomed.AddRange(folders.Where(x => x.Step < newest && !complete.Contains(x)).Select(x => x.Path));
        }
        foreach (var old in doomed)
        {
            var hidden = System.IO.Path.Combine(directory, $".del-{System.IO.Path.GetFileName(old)}-{Guid.NewGuid():N}");
            try { Directory.Move(old, hidden); }
            catch (IOException) { continue; /* in use or gone; left for a later prune */ }
            TryDelete(hidden);
        }
        foreach (var d in Directory.GetDirectories(directory))
        {
            var name = System.IO.Path.GetFileName(d);
            if (name.StartsWith(".tmp-step-", StringComparison.Ordinal) || name.StartsWith(".old-step-", StringComparison.Ordinal)
                || name.StartsWith(".del-step-", StringComparison.Ordinal))
                TryDelete(d);
        }
    }

    private static void TryDelete(string folder)
    {
        try { Directory.Delete(folder, recursive: true); }
        catch (IOException) { /* another writer may be using it; left for a later prune */ }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Reads a JSON file of a checkpoint.</summary>
    /// <exception cref="InvalidDataException">The file is missing, empty, not JSON, or has a value of the wrong type (the message names the file).</exception>
    internal static T ReadJson<T>(string path)
    {
        if (!File.Exists(path)) throw new InvalidDataException($"checkpoint file '{path}' is missing.");
        try
        {
            return JsonSerializer.Deserialize<T>(File.ReadAllBytes(path), Json) ?? throw new InvalidDataException($"checkpoint file '{path}' holds null.");
        }
        catch (JsonException e) { throw new InvalidDataException($"checkpoint file '{path}' is not valid: {e.Message}", e); }
        catch (NotSupportedException e) { throw new InvalidDataException($"checkpoint file '{path}' is not valid: {e.Message}", e); }
    }

    /// <summary>Reads a binary file of a checkpoint (e.g. TorchSharp's optimizer state) with <paramref name="read"/>.</summary>
    /// <exception cref="InvalidDataException">The file is missing, or <paramref name="read"/> failed on its contents (the message names the file).</exception>
    internal static void ReadBinary(string path, Action<BinaryReader> read)
    {
        if (!File.Exists(path)) throw new InvalidDataException($"checkpoint file '{path}' is missing.");
        using var fs = File.OpenRead(path);
        using var br = new BinaryReader(fs);
        try { read(br); }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or InvalidOperationException or FormatException
                                      or OverflowException or NotSupportedException or IndexOutOfRangeException or System.Runtime.InteropServices.ExternalException)
        {
            throw new InvalidDataException($"checkpoint file '{path}' is not valid: {e.Message}", e);
        }
    }

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
