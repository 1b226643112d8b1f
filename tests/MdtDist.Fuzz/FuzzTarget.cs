namespace MdtDist.Fuzz;

/// <summary>How the mutator treats a file of a fuzz case.</summary>
public enum FileKind
{
    /// <summary>Opaque bytes: bit flips, truncation, insertion, deletion.</summary>
    Binary,
    /// <summary>A JSON document: structure-aware edits (type swaps, huge numbers, nulls, duplicated keys) plus byte edits.</summary>
    Json,
    /// <summary>A safetensors file: header-length edits and JSON edits of the header (re-encoded), plus byte edits.</summary>
    SafeTensors,
    /// <summary>A PLY file: header line edits (counts, property types) plus byte edits.</summary>
    Ply,
}

/// <summary>
/// One input of a reader: a set of files (relative paths → bytes) written into an empty folder before the reader runs.
/// </summary>
public sealed class FuzzCase
{
    /// <summary>Creates a case over <paramref name="files"/> (copied).</summary>
    public FuzzCase(IReadOnlyDictionary<string, byte[]> files)
    {
        Files = files.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
    }

    /// <summary>The files, relative paths with '/' separators.</summary>
    public Dictionary<string, byte[]> Files { get; }

    /// <summary>What was done to the seed (for reports).</summary>
    public List<string> Mutations { get; } = new();

    /// <summary>True when the case is known to be invalid, so a reader that accepts it fails the run ("silently accepted").</summary>
    public bool MustReject { get; set; }

    /// <summary>Why the case must be rejected.</summary>
    public string? MustRejectReason { get; set; }

    /// <summary>The files whose bytes differ from the seed.</summary>
    public HashSet<string> Touched { get; } = new(StringComparer.Ordinal);

    /// <summary>Target-specific flags the mutator hooks set (e.g. "rehashed" for training checkpoints).</summary>
    public HashSet<string> Flags { get; } = new(StringComparer.Ordinal);

    /// <summary>Marks the case as one every correct reader rejects.</summary>
    public void Reject(string reason)
    {
        if (MustReject) return;
        MustReject = true;
        MustRejectReason = reason;
    }

    /// <summary>Writes the files under <paramref name="folder"/> (created).</summary>
    public void WriteTo(string folder)
    {
        Directory.CreateDirectory(folder);
        foreach (var (name, bytes) in Files)
        {
            var p = Path.Combine(folder, name.Replace('/', Path.DirectorySeparatorChar));
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.WriteAllBytes(p, bytes);
        }
    }
}

/// <summary>Thrown by a target's oracle when a reader accepted an input it must reject.</summary>
public sealed class SilentlyAcceptedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public SilentlyAcceptedException(string message) : base(message) { }
}

/// <summary>
/// A file reader under test. A target builds valid seed inputs, says how to mutate them, runs the public reading
/// entry point on a folder of files and lists the exceptions that entry point documents. Every other exception, a
/// documented one whose message names no file of the case, a hang, an allocation over the bound, or an accepted input
/// that <see cref="FuzzCase.MustReject"/> marks fails the run. Register new targets in <see cref="FuzzTargets.All"/>.
/// </summary>
public abstract class FuzzTarget
{
    private IReadOnlyList<IReadOnlyDictionary<string, byte[]>>? _seeds;

    /// <summary>The target's name (command lines, reports).</summary>
    public abstract string Name { get; }

    /// <summary>The public entry point exercised, for reports.</summary>
    public abstract string EntryPoint { get; }

    /// <summary>The exceptions the entry point documents for bad files; anything else is "unclean".</summary>
    public virtual IReadOnlyList<Type> DocumentedExceptions { get; } = new[] { typeof(InvalidDataException) };

    /// <summary>Valid inputs to start mutating from (deterministic; built once per process).</summary>
    public IReadOnlyList<IReadOnlyDictionary<string, byte[]>> Seeds => _seeds ??= CreateSeeds();

    /// <summary>Builds the valid seed inputs.</summary>
    protected abstract IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds();

    /// <summary>How the mutator treats <paramref name="file"/>; by default from its extension.</summary>
    public virtual FileKind KindOf(string file) => Path.GetExtension(file) switch
    {
        ".json" => FileKind.Json,
        ".safetensors" => FileKind.SafeTensors,
        ".ply" => FileKind.Ply,
        _ => FileKind.Binary,
    };

    /// <summary>Relative weight of mutating <paramref name="file"/> (0 = never).</summary>
    public virtual double Weight(string file) => 1.0;

    /// <summary>Builds input <paramref name="rng"/> draws: a seed with one to three mutations.</summary>
    public virtual FuzzCase Generate(Random rng)
    {
        var seed = Seeds[rng.Next(Seeds.Count)];
        var c = new FuzzCase(seed);
        int n = 1 + (rng.NextDouble() < 0.3 ? rng.Next(1, 3) : 0);
        for (int i = 0; i < n; i++) Mutator.MutateOne(c, this, rng);
        AfterMutation(c, seed, rng);
        ApplyOracles(c);
        return c;
    }

    private void ApplyOracles(FuzzCase c)
    {
        foreach (var name in c.Touched.OrderBy(n => n, StringComparer.Ordinal))
            if (c.Files.TryGetValue(name, out var b) && KindOf(name) == FileKind.SafeTensors && FormatOracleApplies(c, name)
                && Mutator.SafeTensorsMustReject(b) is { } why)
                c.Reject($"'{name}': {why}");
    }

    /// <summary>Whether an invalid <paramref name="file"/> must make the whole input rejected (false where the
    /// reader is expected to recover, e.g. by falling back to an older checkpoint).</summary>
    protected virtual bool FormatOracleApplies(FuzzCase c, string file) => true;

    /// <summary>Hook after mutation (e.g. re-hash a manifest, add a stray folder, mark a case as must-reject).</summary>
    protected virtual void AfterMutation(FuzzCase c, IReadOnlyDictionary<string, byte[]> seed, Random rng) { }

    /// <summary>Runs the reader on the files of <paramref name="c"/> written under <paramref name="folder"/>; throws when it rejects them.</summary>
    public abstract void Read(string folder, FuzzCase c);

    /// <summary>The bytes of one file as the SharpFuzz entry point receives it; by default the first seed with the
    /// input replacing the file named by the first byte (modulo the file count).</summary>
    public FuzzCase FromRawInput(ReadOnlySpan<byte> data)
    {
        var seed = Seeds[0];
        var names = seed.Keys.Where(k => Weight(k) > 0).OrderBy(k => k, StringComparer.Ordinal).ToArray();
        var c = new FuzzCase(seed);
        if (data.Length == 0) return c;
        var name = names.Length == 1 ? names[0] : names[data[0] % names.Length];
        c.Files[name] = (names.Length == 1 ? data : data[1..]).ToArray();
        c.Touched.Add(name);
        AfterMutation(c, seed, new Random(0));
        ApplyOracles(c);
        return c;
    }
}
