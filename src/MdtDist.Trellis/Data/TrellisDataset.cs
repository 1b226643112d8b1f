using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Pipeline;
using Microsoft.VisualBasic.FileIO;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Data;

/// <summary>Which latent a TRELLIS dataset serves.</summary>
public enum TrellisLatentKind
{
    /// <summary>Stage 1: the dense sparse-structure latent, <c>ss_latents/&lt;model&gt;/&lt;sha256&gt;.npz</c> (<c>mean</c>, <c>[8, 16, 16, 16]</c>).</summary>
    SparseStructure,

    /// <summary>Stage 2: the structured latent, <c>latents/&lt;model&gt;/&lt;sha256&gt;.npz</c> (<c>feats</c> <c>[N, 8]</c>, <c>coords</c> uint8 <c>[N, 3]</c>).</summary>
    StructuredLatent,
}

/// <summary>Which condition a TRELLIS dataset serves.</summary>
public enum TrellisConditionKind
{
    /// <summary>Unconditional.</summary>
    None,

    /// <summary>A rendered view from <c>renders_cond/&lt;sha256&gt;/</c> (TRELLIS's <c>ImageConditionedMixin</c>).</summary>
    Image,

    /// <summary>A caption from the <c>captions</c> column (TRELLIS's <c>TextConditionedMixin</c>).</summary>
    Text,
}

/// <summary>
/// The arguments of a TRELLIS dataset class (<c>dataset.name</c> + <c>dataset.args</c> of a TRELLIS / MDT-dist training
/// config).
/// </summary>
public sealed record TrellisDatasetOptions
{
    /// <summary>Stage-1 or stage-2 latents.</summary>
    public required TrellisLatentKind Kind { get; init; }

    /// <summary><c>latent_model</c>: the folder under <c>ss_latents/</c> or <c>latents/</c> and the suffix of the metadata flag column.</summary>
    public required string LatentModel { get; init; }

    /// <summary>The condition served.</summary>
    public TrellisConditionKind Condition { get; init; } = TrellisConditionKind.Image;

    /// <summary><c>min_aesthetic_score</c> (TRELLIS's default 5.0; MDT-dist's configs use 4.5).</summary>
    public double MinAestheticScore { get; init; } = 5.0;

    /// <summary><c>max_num_voxels</c> (structured latents only; TRELLIS's default 32768).</summary>
    public long MaxNumVoxels { get; init; } = 32768;

    /// <summary><c>normalization</c> (per-channel mean and std applied to every latent served), or null for none.</summary>
    public SLatNormalization? Normalization { get; init; }

    /// <summary><c>image_size</c> of the condition images (518).</summary>
    public int ImageSize { get; init; } = 518;

    /// <summary>The TRELLIS dataset classes this record can describe, by name.</summary>
    public static IReadOnlyList<string> KnownClasses { get; } = new[]
    {
        "SparseStructureLatent", "ImageConditionedSparseStructureLatent", "TextConditionedSparseStructureLatent",
        "SLat", "ImageConditionedSLat", "TextConditionedSLat",
    };

    /// <summary>
    /// Maps a TRELLIS dataset class and its arguments. Every argument is either honoured or reported; the visualisation
    /// decoders (<c>pretrained_ss_dec</c>, <c>ss_dec_path</c>, <c>ss_dec_ckpt</c>, <c>pretrained_slat_dec</c>, ...) are
    /// accepted and returned in <paramref name="ignored"/> because sample snapshots here use the teacher's pipeline
    /// decoders instead.
    /// </summary>
    /// <exception cref="InvalidDataException">An unknown class, an unknown argument, or a value of the wrong type; every
    /// problem is named with <paramref name="source"/> and the key.</exception>
    public static TrellisDatasetOptions FromConfig(string name, JsonObject? args, string source, out IReadOnlyList<string> ignored)
    {
        var ign = new List<string>();
        (TrellisLatentKind kind, TrellisConditionKind cond) = name switch
        {
            "SparseStructureLatent" => (TrellisLatentKind.SparseStructure, TrellisConditionKind.None),
            "ImageConditionedSparseStructureLatent" => (TrellisLatentKind.SparseStructure, TrellisConditionKind.Image),
            "TextConditionedSparseStructureLatent" => (TrellisLatentKind.SparseStructure, TrellisConditionKind.Text),
            "SLat" => (TrellisLatentKind.StructuredLatent, TrellisConditionKind.None),
            "ImageConditionedSLat" => (TrellisLatentKind.StructuredLatent, TrellisConditionKind.Image),
            "TextConditionedSLat" => (TrellisLatentKind.StructuredLatent, TrellisConditionKind.Text),
            _ => throw new InvalidDataException($"{source}: dataset.name \"{name}\" is not supported (supported: {string.Join(", ", KnownClasses)})."),
        };
        var a = new ConfigArgs(name, args, "dataset.args.");
        var o = new TrellisDatasetOptions
        {
            Kind = kind, Condition = cond, LatentModel = a.String("latent_model"),
            MinAestheticScore = a.Double("min_aesthetic_score", 5.0),
        };
        if (kind == TrellisLatentKind.StructuredLatent) o = o with { MaxNumVoxels = a.Int("max_num_voxels", o.MaxNumVoxels, 1, long.MaxValue) };
        if (cond == TrellisConditionKind.Image) o = o with { ImageSize = (int)a.Int("image_size", o.ImageSize, 14, 4096) };
        if (a.Object("normalization", required: false, ignoreUnknown: false) is { } n)
        {
            var mean = n.DoubleListOrNull("mean");
            var std = n.DoubleListOrNull("std");
            if (mean is null || std is null || mean.Length != std.Length || mean.Length == 0)
                a.Reject("normalization", "must be {\"mean\": [..], \"std\": [..]} of equal, non-zero length");
            else if (std.Any(x => !(x > 0)))
                a.Reject("normalization", "std must be positive");
            else o = o with { Normalization = new SLatNormalization(mean, std) };
        }
        // The visualisation decoders of the other stage are not this class's arguments.
        var decoders = kind == TrellisLatentKind.SparseStructure
            ? new[] { "pretrained_ss_dec", "ss_dec_path", "ss_dec_ckpt" }
            : new[] { "pretrained_slat_dec", "slat_dec_path", "slat_dec_ckpt" };
        foreach (var key in decoders.Where(a.Has))
        {
            a.Accept(key);
            ign.Add($"dataset.args.{key}");
        }
        var errors = a.Problems();
        if (errors.Count > 0) throw new InvalidDataException($"{source}: {string.Join("; ", errors)}.");
        ignored = ign;
        return o;
    }
}

/// <summary>One instance kept by the filters.</summary>
/// <param name="Root">The dataset root it comes from.</param>
/// <param name="Sha256">Its id (the <c>sha256</c> column).</param>
/// <param name="AestheticScore">Its <c>aesthetic_score</c>.</param>
/// <param name="NumVoxels">Its <c>num_voxels</c> (0 when the column is absent).</param>
public sealed record TrellisInstance(string Root, string Sha256, double AestheticScore, long NumVoxels);

/// <summary>
/// A dataset in the layout of TRELLIS's dataset toolkit — one or more roots, each with <c>metadata.csv</c> and the
/// latents (and condition renders) it lists — filtered exactly as TRELLIS's dataset classes filter it:
/// <list type="bullet">
/// <item>stage 1 (<c>SparseStructureLatent</c>): <c>ss_latent_&lt;model&gt;</c> true, then <c>aesthetic_score</c> ≥ the minimum;</item>
/// <item>stage 2 (<c>SLat</c>): <c>latent_&lt;model&gt;</c> true, <c>aesthetic_score</c> ≥ the minimum, <c>num_voxels</c> ≤ the maximum;</item>
/// <item>then, image-conditioned: <c>cond_rendered</c> true; text-conditioned: <c>captions</c> present.</item>
/// </list>
/// Instances keep the roots' order and each file's row order. Boolean cells are pandas' spellings (True/False, any
/// case); an empty cell counts as false (pandas would refuse the filter). Latents are normalised by the configured
/// mean/std.
/// </summary>
public sealed class TrellisDataset
{
    private readonly List<TrellisInstance> _instances = new();
    private readonly Dictionary<(string, string), string> _captions = new();
    private readonly Dictionary<string, IReadOnlyList<KeyValuePair<string, int>>> _stats = new(StringComparer.Ordinal);

    private TrellisDataset(TrellisDatasetOptions options) => Options = options;

    /// <summary>The options.</summary>
    public TrellisDatasetOptions Options { get; }

    /// <summary>The instances kept, in order.</summary>
    public IReadOnlyList<TrellisInstance> Instances => _instances;

    /// <summary>Number of instances kept.</summary>
    public int Count => _instances.Count;

    /// <summary>Per root (its folder name, as TRELLIS keys it): the count after each filter, starting with <c>Total</c>.</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<KeyValuePair<string, int>>> Stats => _stats;

    /// <summary>Reads and filters the roots' <c>metadata.csv</c> files.</summary>
    /// <exception cref="ArgumentException">No root.</exception>
    /// <exception cref="FileNotFoundException">A root without <c>metadata.csv</c>; the message names it.</exception>
    /// <exception cref="InvalidDataException">A malformed file, a missing column or an unparsable cell; the message names
    /// the file, the row and the column.</exception>
    public static TrellisDataset Open(IEnumerable<string> roots, TrellisDatasetOptions options)
    {
        ArgumentNullException.ThrowIfNull(roots);
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.LatentModel)) throw new ArgumentException("LatentModel must be set.", nameof(options));
        var list = roots.ToList();
        if (list.Count == 0) throw new ArgumentException("at least one dataset root is needed.", nameof(roots));
        var ds = new TrellisDataset(options);
        foreach (var root in list) ds.AddRoot(root);
        return ds;
    }

    private void AddRoot(string root)
    {
        var path = Path.Combine(root, "metadata.csv");
        if (!File.Exists(path))
            throw new FileNotFoundException($"'{root}' is not a TRELLIS dataset root: '{path}' does not exist.", path);
        var rows = ReadCsv(path, out var columns);
        var o = Options;
        string flag = o.Kind == TrellisLatentKind.SparseStructure ? $"ss_latent_{o.LatentModel}" : $"latent_{o.LatentModel}";
        var required = new List<string> { "sha256", flag, "aesthetic_score" };
        if (o.Kind == TrellisLatentKind.StructuredLatent) required.Add("num_voxels");
        if (o.Condition == TrellisConditionKind.Image) required.Add("cond_rendered");
        if (o.Condition == TrellisConditionKind.Text) required.Add("captions");
        Require(columns, path, required);

        var stats = new List<KeyValuePair<string, int>> { new("Total", rows.Count) };
        IEnumerable<(int Line, Dictionary<string, string> Row)> kept = rows;
        kept = kept.Where(r => Bool(r, flag, path)).ToList();
        stats.Add(new(o.Kind == TrellisLatentKind.SparseStructure ? "With sparse structure latents" : "With latent", kept.Count()));
        kept = kept.Where(r => Number(r, "aesthetic_score", path) >= o.MinAestheticScore).ToList();
        stats.Add(new($"Aesthetic score >= {o.MinAestheticScore.ToString(CultureInfo.InvariantCulture)}", kept.Count()));
        if (o.Kind == TrellisLatentKind.StructuredLatent)
        {
            kept = kept.Where(r => Number(r, "num_voxels", path) <= o.MaxNumVoxels).ToList();
            stats.Add(new($"Num voxels <= {o.MaxNumVoxels}", kept.Count()));
        }
        if (o.Condition == TrellisConditionKind.Image)
        {
            kept = kept.Where(r => Bool(r, "cond_rendered", path)).ToList();
            stats.Add(new("Cond rendered", kept.Count()));
        }
        if (o.Condition == TrellisConditionKind.Text)
        {
            kept = kept.Where(r => r.Row["captions"].Length > 0).ToList();
            stats.Add(new("With captions", kept.Count()));
        }
        foreach (var (line, row) in kept)
        {
            var sha = row["sha256"];
            if (sha.Length == 0 || sha.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || sha.Contains("..", StringComparison.Ordinal))
                throw new InvalidDataException($"'{path}' line {line}: sha256 '{sha}' is not a usable file name.");
            long voxels = columns.Contains("num_voxels") && row["num_voxels"].Length > 0 ? (long)Number((line, row), "num_voxels", path) : 0;
            _instances.Add(new TrellisInstance(root, sha, Number((line, row), "aesthetic_score", path), voxels));
            if (o.Condition == TrellisConditionKind.Text) _captions[(root, sha)] = row["captions"];
        }
        var key = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(root)));
        _stats[_stats.ContainsKey(key) ? root : key] = stats;
    }

    private static void Require(HashSet<string> columns, string path, IReadOnlyList<string> names)
    {
        var missing = names.Where(n => !columns.Contains(n)).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"'{path}' has no column {string.Join(", ", missing.Select(m => $"'{m}'"))} (columns: {string.Join(", ", columns)}).");
    }

    private static bool Bool(in (int Line, Dictionary<string, string> Row) r, string column, string path)
    {
        var v = r.Row[column];
        if (v.Length == 0) return false;
        if (v.Equals("true", StringComparison.OrdinalIgnoreCase)) return true;
        if (v.Equals("false", StringComparison.OrdinalIgnoreCase)) return false;
        throw new InvalidDataException($"'{path}' line {r.Line}: column '{column}' must be True or False, found '{v}'.");
    }

    private static double Number(in (int Line, Dictionary<string, string> Row) r, string column, string path)
    {
        var v = r.Row[column];
        if (v.Length == 0 || v.Equals("nan", StringComparison.OrdinalIgnoreCase)) return double.NaN;
        if (double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var x)) return x;
        throw new InvalidDataException($"'{path}' line {r.Line}: column '{column}' must be a number, found '{v}'.");
    }

    private static List<(int, Dictionary<string, string>)> ReadCsv(string path, out HashSet<string> columns)
    {
        var rows = new List<(int, Dictionary<string, string>)>();
        try
        {
            using var parser = new TextFieldParser(path, System.Text.Encoding.UTF8) { TextFieldType = FieldType.Delimited, HasFieldsEnclosedInQuotes = true, TrimWhiteSpace = false };
            parser.SetDelimiters(",");
            var header = parser.ReadFields() ?? throw new InvalidDataException($"'{path}' is empty (expected a header line).");
            columns = new HashSet<string>(StringComparer.Ordinal);
            foreach (var h in header)
                if (!columns.Add(h)) throw new InvalidDataException($"'{path}': column '{h}' appears twice in the header.");
            while (!parser.EndOfData)
            {
                long line = parser.LineNumber;
                var fields = parser.ReadFields();
                if (fields is null || (fields.Length == 1 && fields[0].Length == 0)) continue;
                if (fields.Length != header.Length)
                    throw new InvalidDataException($"'{path}' line {line}: {fields.Length} fields, the header has {header.Length}.");
                var row = new Dictionary<string, string>(header.Length, StringComparer.Ordinal);
                for (int i = 0; i < header.Length; i++) row[header[i]] = fields[i];
                rows.Add(((int)line, row));
            }
        }
        catch (MalformedLineException e)
        {
            throw new InvalidDataException($"'{path}' line {e.LineNumber}: malformed CSV ({e.Message}).", e);
        }
        return rows;
    }

    /// <summary>The stage-1 latent of instance <paramref name="index"/>: <c>mean</c> of its <c>.npz</c>, float32
    /// <c>[C, R, R, R]</c>, normalised when the options say so.</summary>
    /// <exception cref="InvalidDataException">The file is malformed or holds the wrong shape; the message names it.</exception>
    public Tensor LoadStructureLatent(int index)
    {
        if (Options.Kind != TrellisLatentKind.SparseStructure) throw new InvalidOperationException("this dataset serves structured latents.");
        var inst = Instance(index);
        var path = Path.Combine(inst.Root, "ss_latents", Options.LatentModel, inst.Sha256 + ".npz");
        var arrays = Numpy.LoadNpz(path, new[] { "mean" });
        using var mean = arrays["mean"];
        if (mean.dim() != 4 || !mean.is_floating_point())
            throw new InvalidDataException($"'{path}': 'mean' must be a floating [C, R, R, R] array, found {mean.dtype} [{string.Join(", ", mean.shape)}].");
        using var scope = torch.NewDisposeScope();
        var z = mean.to(ScalarType.Float32);
        if (Options.Normalization is { } n)
        {
            if (n.Mean.Count != z.shape[0])
                throw new InvalidDataException($"'{path}': 'mean' has {z.shape[0]} channels, the normalisation {n.Mean.Count}.");
            z = n.Normalize(z, channelDim: 0);
        }
        return z.MoveToOuterDisposeScope();
    }

    /// <summary>The stage-2 latent of instance <paramref name="index"/>: coords int32 <c>[N, 3]</c> and feats float32
    /// <c>[N, C]</c> (normalised when the options say so).</summary>
    /// <exception cref="InvalidDataException">The file is malformed or holds inconsistent arrays; the message names it.</exception>
    public (Tensor Coords, Tensor Feats) LoadStructuredLatent(int index)
    {
        if (Options.Kind != TrellisLatentKind.StructuredLatent) throw new InvalidOperationException("this dataset serves sparse-structure latents.");
        var inst = Instance(index);
        var path = Path.Combine(inst.Root, "latents", Options.LatentModel, inst.Sha256 + ".npz");
        var arrays = Numpy.LoadNpz(path, new[] { "feats", "coords" });
        using var feats = arrays["feats"];
        using var coords = arrays["coords"];
        if (feats.dim() != 2 || !feats.is_floating_point())
            throw new InvalidDataException($"'{path}': 'feats' must be a floating [N, C] array, found {feats.dtype} [{string.Join(", ", feats.shape)}].");
        if (coords.dim() != 2 || coords.shape[1] != 3 || coords.is_floating_point() || coords.dtype == ScalarType.Bool || coords.shape[0] != feats.shape[0])
            throw new InvalidDataException($"'{path}': 'coords' must be an integer [N, 3] array with N = {feats.shape[0]} (the rows of 'feats'), found {coords.dtype} [{string.Join(", ", coords.shape)}].");
        using var scope = torch.NewDisposeScope();
        var c = coords.to(ScalarType.Int32);
        if (c.numel() > 0 && (c.min().item<int>() < 0 || c.max().item<int>() > 63))
            throw new InvalidDataException($"'{path}': 'coords' must lie in [0, 64) (TRELLIS's 64³ grid), found [{c.min().item<int>()}, {c.max().item<int>()}].");
        var f = feats.to(ScalarType.Float32);
        if (Options.Normalization is { } n)
        {
            if (n.Mean.Count != f.shape[1])
                throw new InvalidDataException($"'{path}': 'feats' has {f.shape[1]} channels, the normalisation {n.Mean.Count}.");
            f = n.Normalize(f, channelDim: 1);
        }
        return (c.MoveToOuterDisposeScope(), f.MoveToOuterDisposeScope());
    }

    /// <summary>The captions of instance <paramref name="index"/> (the JSON list of its <c>captions</c> cell).</summary>
    /// <exception cref="InvalidDataException">The cell is not a JSON list of strings.</exception>
    public IReadOnlyList<string> Captions(int index)
    {
        if (Options.Condition != TrellisConditionKind.Text) throw new InvalidOperationException("this dataset is not text-conditioned.");
        var inst = Instance(index);
        var cell = _captions[(inst.Root, inst.Sha256)];
        try
        {
            var list = JsonSerializer.Deserialize<List<string>>(cell);
            if (list is { Count: > 0 }) return list;
        }
        catch (JsonException) { }
        throw new InvalidDataException($"'{Path.Combine(inst.Root, "metadata.csv")}': the captions of {inst.Sha256} must be a non-empty JSON list of strings, found '{cell}'.");
    }

    /// <summary>The condition views of instance <paramref name="index"/>: the image files listed by
    /// <c>renders_cond/&lt;sha256&gt;/transforms.json</c> (<c>frames[].file_path</c>), in order.</summary>
    /// <exception cref="FileNotFoundException">transforms.json or a listed image is missing.</exception>
    /// <exception cref="InvalidDataException">transforms.json is malformed.</exception>
    public IReadOnlyList<string> ConditionViews(int index)
    {
        if (Options.Condition != TrellisConditionKind.Image) throw new InvalidOperationException("this dataset is not image-conditioned.");
        var inst = Instance(index);
        var dir = Path.Combine(inst.Root, "renders_cond", inst.Sha256);
        var tj = Path.Combine(dir, "transforms.json");
        if (!File.Exists(tj)) throw new FileNotFoundException($"'{tj}' does not exist (instance {inst.Sha256} is marked cond_rendered).", tj);
        var views = new List<string>();
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(tj));
            if (!doc.RootElement.TryGetProperty("frames", out var frames) || frames.ValueKind != JsonValueKind.Array || frames.GetArrayLength() == 0)
                throw new InvalidDataException($"'{tj}' has no non-empty \"frames\" list.");
            int i = 0;
            foreach (var f in frames.EnumerateArray())
            {
                if (f.ValueKind != JsonValueKind.Object || !f.TryGetProperty("file_path", out var fp) || fp.ValueKind != JsonValueKind.String || fp.GetString() is not { Length: > 0 } rel)
                    throw new InvalidDataException($"'{tj}': frames[{i}].file_path must be a non-empty string.");
                var full = Path.GetFullPath(Path.Combine(dir, rel));
                if (!full.StartsWith(Path.GetFullPath(dir) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new InvalidDataException($"'{tj}': frames[{i}].file_path '{rel}' points outside '{dir}'.");
                if (!File.Exists(full)) throw new FileNotFoundException($"'{tj}': frames[{i}].file_path '{rel}' does not exist.", full);
                views.Add(full);
                i++;
            }
        }
        catch (JsonException e) { throw new InvalidDataException($"'{tj}' is not valid JSON: {e.Message}", e); }
        return views;
    }

    private TrellisInstance Instance(int index) =>
        index >= 0 && index < _instances.Count ? _instances[index] : throw new ArgumentOutOfRangeException(nameof(index), index, $"the dataset has {_instances.Count} instances.");
}
