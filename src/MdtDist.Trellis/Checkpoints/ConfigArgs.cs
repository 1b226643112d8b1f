using System.Text.Json;
using System.Text.Json.Nodes;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>
/// Reads the <c>args</c> object of a TRELLIS checkpoint config (<c>{"name": ..., "args": {...}}</c>) with the
/// constructor's Python semantics: required and optional keyword arguments, and an error that lists every
/// argument the class does not take (Python would raise a TypeError for them). Every problem (missing, mistyped,
/// unknown) is collected and reported at once by <see cref="Finish"/>; a value of the wrong JSON type never escapes as
/// a System.Text.Json exception. The one reader of TRELLIS model configs.
/// </summary>
internal sealed class ConfigArgs
{
    private readonly JsonObject _args;
    private readonly string _className;
    private readonly string _prefix;
    private readonly bool _ignoreUnknown;
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);
    private readonly List<string> _errors;
    private readonly List<ConfigArgs> _children = new();

    /// <summary>Reads <paramref name="args"/> (null: no arguments) of TRELLIS class <paramref name="className"/>.</summary>
    public ConfigArgs(string className, JsonObject? args)
        : this(className, args, "", false, new List<string>())
    {
    }

    /// <summary>
    /// Reads <paramref name="args"/> with every key reported as <paramref name="prefix"/> + name (e.g. <c>trainer.args.</c>),
    /// for config sections that are not a model's constructor arguments; read the problems with <see cref="Problems"/>.
    /// </summary>
    public ConfigArgs(string className, JsonObject? args, string prefix)
        : this(className, args, prefix, false, new List<string>())
    {
    }

    private ConfigArgs(string className, JsonObject? args, string prefix, bool ignoreUnknown, List<string> errors)
    {
        _className = className;
        _args = args ?? new JsonObject();
        _prefix = prefix;
        _ignoreUnknown = ignoreUnknown;
        _errors = errors;
    }

    private string Key(string name) => _prefix + name;

    private JsonNode? Get(string name, bool required)
    {
        _used.Add(name);
        if (_args.TryGetPropertyValue(name, out var node) && node is not null) return node;
        if (required)
            _errors.Add(_args.ContainsKey(name) ? $"required argument '{Key(name)}' is null" : $"missing required argument '{Key(name)}'");
        return null;
    }

    private T Convert<T>(string name, JsonNode node, Func<JsonElement, T> read, string what, T fallback)
    {
        try { return read(node.Deserialize<JsonElement>()); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException or OverflowException)
        {
            _errors.Add($"argument '{Key(name)}' = {Shorten(node.ToJsonString())} is not {what}");
            return fallback;
        }
    }

    private static string Shorten(string json) => json.Length <= 80 ? json : json[..77] + "...";

    private static long ReadInt(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Number) throw new FormatException();
        if (e.TryGetInt64(out var v)) return v;
        double d = e.GetDouble();
        if (d == Math.Floor(d) && Math.Abs(d) < 9e15) return (long)d;
        throw new FormatException();
    }

    private static double ReadDouble(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Number) throw new FormatException();
        double d = e.GetDouble();
        return double.IsFinite(d) ? d : throw new FormatException();
    }

    /// <summary>A required integer.</summary>
    public long Int(string name) => Get(name, true) is { } n ? Convert(name, n, ReadInt, "an integer", 0L) : 0L;

    /// <summary>An optional integer (null in the file means the default).</summary>
    public long Int(string name, long dflt) => Get(name, false) is { } n ? Convert(name, n, ReadInt, "an integer", dflt) : dflt;

    /// <summary>An optional integer that may be null (Python's <c>None</c>).</summary>
    public long? IntOrNull(string name, long? dflt)
    {
        _used.Add(name);
        if (!_args.TryGetPropertyValue(name, out var node)) return dflt;
        if (node is null) return null;
        return Convert<long?>(name, node, e => ReadInt(e), "an integer or null", dflt);
    }

    /// <summary>A required finite number.</summary>
    public double Double(string name) => Get(name, true) is { } n ? Convert(name, n, ReadDouble, "a finite number", 0.0) : 0.0;

    /// <summary>An optional finite number.</summary>
    public double Double(string name, double dflt) => Get(name, false) is { } n ? Convert(name, n, ReadDouble, "a finite number", dflt) : dflt;

    /// <summary>An optional finite number that may be absent (null).</summary>
    public double? DoubleOrNull(string name) => Get(name, false) is { } n ? Convert<double?>(name, n, e => ReadDouble(e), "a finite number", null) : null;

    /// <summary>A required boolean.</summary>
    public bool Bool(string name) => Get(name, true) is { } n ? Convert(name, n, ReadBool, "a boolean", false) : false;

    /// <summary>An optional boolean.</summary>
    public bool Bool(string name, bool dflt) => Get(name, false) is { } n ? Convert(name, n, ReadBool, "a boolean", dflt) : dflt;

    private static bool ReadBool(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw new FormatException(),
    };

    /// <summary>A required string.</summary>
    public string String(string name) => Get(name, true) is { } n ? Convert(name, n, ReadString, "a string", "") : "";

    /// <summary>An optional string.</summary>
    public string String(string name, string dflt) => Get(name, false) is { } n ? Convert(name, n, ReadString, "a string", dflt) : dflt;

    private static string ReadString(JsonElement e) => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new FormatException();

    /// <summary>An optional finite number in [<paramref name="min"/>, <paramref name="max"/>] (the default, unchecked, when absent or null).</summary>
    public double Double(string name, double dflt, double min, double max)
    {
        if (Get(name, false) is null) return dflt;
        var v = Double(name, dflt);
        if (v >= min && v <= max) return v;
        _errors.Add($"argument '{Key(name)}' = {v.ToString(System.Globalization.CultureInfo.InvariantCulture)} is not in [{min.ToString(System.Globalization.CultureInfo.InvariantCulture)}, {max.ToString(System.Globalization.CultureInfo.InvariantCulture)}]");
        return dflt;
    }

    /// <summary>An optional integer in [<paramref name="min"/>, <paramref name="max"/>] (the default, unchecked, when absent or null).</summary>
    public long Int(string name, long dflt, long min, long max)
    {
        if (Get(name, false) is null) return dflt;
        var v = Int(name, dflt);
        if (v >= min && v <= max) return v;
        _errors.Add(max == long.MaxValue ? $"argument '{Key(name)}' = {v} is not >= {min}" : $"argument '{Key(name)}' = {v} is not in [{min}, {max}]");
        return dflt;
    }

    /// <summary>An optional list of finite numbers (null or absent: null).</summary>
    public double[]? DoubleListOrNull(string name) => Get(name, false) is { } n
        ? Convert<double[]?>(name, n, e => e.ValueKind == JsonValueKind.Array ? e.EnumerateArray().Select(ReadDouble).ToArray() : throw new FormatException(),
            "a list of finite numbers", null)
        : null;

    /// <summary>Whether the argument is present (null counts as present); does not mark it as read.</summary>
    public bool Has(string name) => _args.ContainsKey(name);

    /// <summary>The raw value of an argument of a shape the typed readers do not cover (marks it as read; null when absent).</summary>
    public JsonNode? Raw(string name)
    {
        _used.Add(name);
        return _args.TryGetPropertyValue(name, out var node) ? node : null;
    }

    /// <summary>The JSON text of a value for a message (shortened).</summary>
    public static string Show(JsonNode? node) => node is null ? "null" : Shorten(node.ToJsonString());

    /// <summary>A required list of integers.</summary>
    public long[] IntList(string name) => Get(name, true) is { } n ? ReadList(name, n) : Array.Empty<long>();

    /// <summary>An optional list of integers (null or absent: null).</summary>
    public long[]? IntListOrNull(string name) => Get(name, false) is { } n ? ReadList(name, n) : null;

    private long[] ReadList(string name, JsonNode n) =>
        Convert(name, n, e => e.ValueKind == JsonValueKind.Array ? e.EnumerateArray().Select(ReadInt).ToArray() : throw new FormatException(),
            "a list of integers", Array.Empty<long>());

    /// <summary>
    /// A nested object argument (e.g. <c>representation_config</c>), read with the same rules; its problems are reported
    /// with this reader's (keys prefixed <c>name.</c>). With <paramref name="ignoreUnknown"/>, keys the nested reader
    /// does not ask for are allowed (as TRELLIS ignores them). Returns null (and records an error when required) when
    /// the argument is absent, null or not an object.
    /// </summary>
    public ConfigArgs? Object(string name, bool required, bool ignoreUnknown)
    {
        var node = Get(name, required);
        if (node is null) return null;
        if (node is not JsonObject obj)
        {
            _errors.Add($"argument '{Key(name)}' = {Shorten(node.ToJsonString())} is not an object");
            return null;
        }
        var child = new ConfigArgs(_className, obj, Key(name) + ".", ignoreUnknown, _errors);
        _children.Add(child);
        return child;
    }

    /// <summary>Records that the value of <paramref name="name"/> is invalid (<paramref name="why"/>).</summary>
    public void Reject(string name, string why) => _errors.Add($"argument '{Key(name)}': {why}");

    /// <summary>Marks keys that are accepted but have no effect here.</summary>
    public void Accept(params string[] names)
    {
        foreach (var n in names) _used.Add(n);
    }

    private void CollectUnknown(List<string> unknown)
    {
        if (!_ignoreUnknown)
            unknown.AddRange(_args.Select(kv => kv.Key).Where(k => !_used.Contains(k)).Select(Key));
        foreach (var c in _children) c.CollectUnknown(unknown);
    }

    /// <summary>Every bad, missing and unknown argument so far (unknown ones: those not read yet).</summary>
    public IReadOnlyList<string> Problems()
    {
        var unknown = new List<string>();
        CollectUnknown(unknown);
        var all = new List<string>(_errors);
        if (unknown.Count > 0) all.Add($"unknown argument(s) {string.Join(", ", unknown.Select(u => $"'{u}'"))}");
        return all;
    }

    /// <summary>Throws one <see cref="ArgumentException"/> naming every bad, missing and unknown argument.</summary>
    public void Finish()
    {
        var all = Problems();
        if (all.Count > 0)
            throw new ArgumentException($"invalid {_className} config: {string.Join("; ", all)}.", "args");
    }
}

/// <summary>
/// Collects the range and consistency problems of one config record so that <c>Validate</c> reports all of them in one
/// <see cref="ArgumentException"/> (keys are the Python keyword names). Arithmetic on config values is checked: a size
/// that overflows is a problem, never an <see cref="OverflowException"/>.
/// </summary>
internal sealed class ConfigProblems
{
    private readonly string _className;
    private readonly List<string> _errors = new();

    public ConfigProblems(string className) => _className = className;

    /// <summary>Records <paramref name="message"/> unless <paramref name="ok"/>.</summary>
    public bool Check(bool ok, string message)
    {
        if (!ok) _errors.Add(message);
        return ok;
    }

    /// <summary>Requires <paramref name="min"/> ≤ <paramref name="value"/> ≤ <paramref name="max"/>.</summary>
    public bool Range(string key, long value, long min, long max) =>
        Check(value >= min && value <= max, max == long.MaxValue
            ? $"{key} must be >= {min}, got {value}"
            : $"{key} must be in [{min}, {max}], got {value}");

    /// <summary>A channel count: 1 ≤ value ≤ <see cref="TrellisConfigLimits.MaxChannels"/>.</summary>
    public bool Channels(string key, long value) => Range(key, value, 1, TrellisConfigLimits.MaxChannels);

    /// <summary>A block count: 0 ≤ value ≤ <see cref="TrellisConfigLimits.MaxBlocks"/>.</summary>
    public bool Blocks(string key, long value) => Range(key, value, 0, TrellisConfigLimits.MaxBlocks);

    /// <summary>
    /// The attention heads TRELLIS derives (<c>num_heads or model_channels // num_head_channels</c>): at least one, and a
    /// divisor of <paramref name="modelChannels"/>. Returns the head count (0 when invalid).
    /// </summary>
    public long Heads(long modelChannels, long? numHeads, long numHeadChannels)
    {
        if (numHeads is { } h)
        {
            if (!Range("num_heads", h, 1, Math.Max(1, modelChannels))) return 0;
        }
        else
        {
            if (!Range("num_head_channels", numHeadChannels, 1, Math.Max(1, modelChannels))) return 0;
            h = modelChannels / numHeadChannels;
        }
        return Check(modelChannels >= 1 && modelChannels % h == 0, $"model_channels {modelChannels} must be a multiple of the number of heads {h}") ? h : 0;
    }

    /// <summary><c>mlp_ratio</c> in (0, <see cref="TrellisConfigLimits.MaxMlpRatio"/>] giving a hidden width <c>int(C·ratio)</c> ≥ 1.</summary>
    public void MlpRatio(double ratio, long modelChannels)
    {
        if (Check(double.IsFinite(ratio) && ratio > 0 && ratio <= TrellisConfigLimits.MaxMlpRatio,
                $"mlp_ratio must be in (0, {TrellisConfigLimits.MaxMlpRatio}], got {ratio}"))
            Check((long)Math.Truncate(modelChannels * ratio) >= 1, $"mlp_ratio {ratio} gives an MLP hidden width int({modelChannels}·{ratio}) < 1");
    }

    /// <summary>Requires <paramref name="value"/> to be one of <paramref name="allowed"/>.</summary>
    public void OneOf(string key, string value, params string[] allowed) =>
        Check(allowed.Contains(value, StringComparer.Ordinal), $"{key} must be {string.Join(" or ", allowed.Select(a => $"'{a}'"))}, got '{value}'");

    /// <summary>Throws one <see cref="ArgumentException"/> listing every recorded problem.</summary>
    public void ThrowIfAny()
    {
        if (_errors.Count > 0) throw new ArgumentException($"invalid {_className} config: {string.Join("; ", _errors)}.", "config");
    }
}
