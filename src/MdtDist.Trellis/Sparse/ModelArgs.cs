using System.Text.Json;

namespace MdtDist.Trellis.Sparse;

/// <summary>
/// Reads a TRELLIS checkpoint config's <c>args</c> object (<c>ckpts/NAME.json</c>: <c>{"name": ..., "args": {...}}</c>)
/// with the constructor's defaults, and rejects keys the constructor does not take (as Python would).
/// </summary>
internal sealed class ModelArgs
{
    private readonly JsonElement _args;
    private readonly HashSet<string> _known = new(StringComparer.Ordinal);
    private readonly string _className;

    /// <summary>
    /// Wraps <paramref name="config"/>: either the args object itself or a whole <c>{"name", "args"}</c> config, whose
    /// name must then be one of <paramref name="classNames"/>.
    /// </summary>
    public ModelArgs(JsonElement config, params string[] classNames)
    {
        _className = classNames[0];
        if (config.ValueKind != JsonValueKind.Object)
            throw new ArgumentException($"{_className} config must be a JSON object, found {config.ValueKind}.", nameof(config));
        if (config.TryGetProperty("args", out var inner) && inner.ValueKind == JsonValueKind.Object && config.TryGetProperty("name", out var name))
        {
            var n = name.GetString();
            if (!classNames.Contains(n, StringComparer.Ordinal))
                throw new ArgumentException($"config names class '{n}', expected {string.Join(" or ", classNames.Select(c => $"'{c}'"))}.", nameof(config));
            _className = n!;
            config = inner;
        }
        _args = config;
    }

    private bool TryGet(string key, out JsonElement value)
    {
        _known.Add(key);
        return _args.TryGetProperty(key, out value) && value.ValueKind != JsonValueKind.Null;
    }

    private ArgumentException Bad(string key, string expected, JsonElement found) =>
        new($"{_className} config: '{key}' must be {expected}, found {found.ValueKind} {found.GetRawText()}.", "args");

    public int Int(string key)
    {
        if (!TryGet(key, out var v))
            throw new ArgumentException($"{_className} config: required argument '{key}' is missing.", "args");
        return ReadInt(key, v);
    }

    public int Int(string key, int defaultValue) => TryGet(key, out var v) ? ReadInt(key, v) : defaultValue;

    public int? IntOrNull(string key, int? defaultValue) => TryGet(key, out var v) ? ReadInt(key, v) : defaultValue;

    private int ReadInt(string key, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
        throw Bad(key, "an integer", v);
    }

    public double Double(string key, double defaultValue)
    {
        if (!TryGet(key, out var v)) return defaultValue;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Bad(key, "a number", v);
    }

    public bool Bool(string key, bool defaultValue)
    {
        if (!TryGet(key, out var v)) return defaultValue;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Bad(key, "true or false", v),
        };
    }

    public string String(string key, string defaultValue)
    {
        if (!TryGet(key, out var v)) return defaultValue;
        return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Bad(key, "a string", v);
    }

    public int[]? IntList(string key)
    {
        if (!TryGet(key, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Array) throw Bad(key, "a list of integers", v);
        return v.EnumerateArray().Select(e => ReadInt(key, e)).ToArray();
    }

    /// <summary>Marks keys that are accepted but have no effect here.</summary>
    public void Accept(params string[] keys)
    {
        foreach (var k in keys) _known.Add(k);
    }

    /// <summary>Throws when the args hold a key the constructor does not take.</summary>
    public void RejectUnknown()
    {
        var unknown = _args.EnumerateObject().Select(p => p.Name).Where(n => !_known.Contains(n)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"{_className} config has unknown argument(s): {string.Join(", ", unknown)}.", "args");
    }
}
