using System.Text.Json;
using System.Text.Json.Nodes;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>
/// Reads the <c>args</c> object of a TRELLIS checkpoint config (<c>{"name": ..., "args": {...}}</c>) with the
/// constructor's Python semantics: required and optional keyword arguments, and an error that lists every
/// argument the class does not take (Python would raise a TypeError for them).
/// </summary>
internal sealed class ConfigArgs
{
    private readonly JsonObject _args;
    private readonly string _className;
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);
    private readonly List<string> _errors = new();

    public ConfigArgs(string className, JsonObject? args)
    {
        _className = className;
        _args = args ?? new JsonObject();
    }

    private JsonNode? Get(string name, bool required)
    {
        _used.Add(name);
        if (_args.TryGetPropertyValue(name, out var node) && node is not null) return node;
        if (required && !_args.ContainsKey(name)) _errors.Add($"missing required argument '{name}'");
        return null;
    }

    private T Convert<T>(string name, JsonNode node, Func<JsonElement, T> read, string what, T fallback)
    {
        try { return read(node.Deserialize<JsonElement>()); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException)
        {
            _errors.Add($"argument '{name}' = {node.ToJsonString()} is not {what}");
            return fallback;
        }
    }

    private static long ReadInt(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Number) throw new FormatException();
        if (e.TryGetInt64(out var v)) return v;
        double d = e.GetDouble();
        if (d == Math.Floor(d) && Math.Abs(d) < 9e15) return (long)d;
        throw new FormatException();
    }

    public long Int(string name) => Get(name, true) is { } n ? Convert(name, n, ReadInt, "an integer", 0L) : 0L;
    public long Int(string name, long dflt) => Get(name, false) is { } n ? Convert(name, n, ReadInt, "an integer", dflt) : dflt;

    public long? IntOrNull(string name, long? dflt)
    {
        _used.Add(name);
        if (!_args.TryGetPropertyValue(name, out var node)) return dflt;
        if (node is null) return null;
        return Convert<long?>(name, node, e => ReadInt(e), "an integer or null", dflt);
    }

    public double Double(string name, double dflt) => Get(name, false) is { } n
        ? Convert(name, n, e => e.ValueKind == JsonValueKind.Number ? e.GetDouble() : throw new FormatException(), "a number", dflt)
        : dflt;

    public bool Bool(string name, bool dflt) => Get(name, false) is { } n
        ? Convert(name, n, e => e.ValueKind switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => throw new FormatException() }, "a boolean", dflt)
        : dflt;

    public string String(string name, string dflt) => Get(name, false) is { } n
        ? Convert(name, n, e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new FormatException(), "a string", dflt)
        : dflt;

    public long[] IntList(string name) => Get(name, true) is { } n
        ? Convert(name, n, e => e.ValueKind == JsonValueKind.Array ? e.EnumerateArray().Select(ReadInt).ToArray() : throw new FormatException(), "a list of integers", Array.Empty<long>())
        : Array.Empty<long>();

    /// <summary>Throws one <see cref="ArgumentException"/> naming every bad, missing and unknown argument.</summary>
    public void Finish()
    {
        var unknown = _args.Select(kv => kv.Key).Where(k => !_used.Contains(k)).ToList();
        var all = new List<string>(_errors);
        if (unknown.Count > 0) all.Add($"unknown argument(s) {string.Join(", ", unknown.Select(u => $"'{u}'"))}");
        if (all.Count > 0)
            throw new ArgumentException($"invalid {_className} config: {string.Join("; ", all)}.", "args");
    }
}
