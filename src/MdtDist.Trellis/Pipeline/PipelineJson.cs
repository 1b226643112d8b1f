using System.Text.Json;

namespace MdtDist.Trellis.Pipeline;

/// <summary>
/// Reads values out of a <c>pipeline.json</c> and collects every problem (wrong JSON type, value out of range) with the
/// dotted key it concerns, so that one exception can name the file and all offending keys at once.
/// </summary>
internal sealed class PipelineJson(string source)
{
    public string Source { get; } = source;

    public List<string> Problems { get; } = new();

    public void Add(string key, string problem) => Problems.Add($"{key}: {problem}");

    /// <summary>Throws <see cref="InvalidDataException"/> listing every problem, when there is one.</summary>
    public void ThrowIfAny()
    {
        if (Problems.Count == 0) return;
        throw new InvalidDataException(Problems.Count == 1
            ? $"{Source}: {Problems[0]}"
            : $"{Source}: {Problems.Count} problems:{Environment.NewLine}  {string.Join(Environment.NewLine + "  ", Problems)}");
    }

    public static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => e.ValueKind.ToString(),
    };

    private static string Join(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";

    /// <summary>The member <paramref name="key"/> of <paramref name="obj"/> when present and of kind <paramref name="kind"/>.</summary>
    private bool TryGet(JsonElement obj, string path, string key, JsonValueKind kind, string what, bool required, out JsonElement value)
    {
        value = default;
        if (obj.ValueKind != JsonValueKind.Object || !obj.TryGetProperty(key, out var v))
        {
            if (required) Add(Join(path, key), "is missing");
            return false;
        }
        if (v.ValueKind != kind)
        {
            Add(Join(path, key), $"must be {what}, found {Kind(v)}");
            return false;
        }
        value = v;
        return true;
    }

    public bool TryObject(JsonElement obj, string path, string key, bool required, out JsonElement value) =>
        TryGet(obj, path, key, JsonValueKind.Object, "an object", required, out value);

    public string? String(JsonElement obj, string path, string key, bool required) =>
        TryGet(obj, path, key, JsonValueKind.String, "a string", required, out var v) ? v.GetString() : null;

    public double? Number(JsonElement obj, string path, string key)
    {
        if (!TryGet(obj, path, key, JsonValueKind.Number, "a number", false, out var v)) return null;
        double d = v.GetDouble();
        if (!double.IsFinite(d)) { Add(Join(path, key), $"must be finite, found {v.GetRawText()}"); return null; }
        return d;
    }

    /// <summary>An integer in [<paramref name="min"/>, <paramref name="max"/>] (1e2 and 100.0 count as integers).</summary>
    public int? Integer(JsonElement obj, string path, string key, int min, int max)
    {
        if (!TryGet(obj, path, key, JsonValueKind.Number, "an integer", false, out var v)) return null;
        double d = v.GetDouble();
        if (!double.IsFinite(d) || d != Math.Floor(d)) { Add(Join(path, key), $"must be an integer, found {v.GetRawText()}"); return null; }
        if (d < min || d > max) { Add(Join(path, key), $"must be in [{min}, {max}], found {v.GetRawText()}"); return null; }
        return (int)d;
    }

    /// <summary>An array of finite numbers (of length <paramref name="length"/> when given).</summary>
    public double[]? Numbers(JsonElement obj, string path, string key, bool required, int? length = null)
    {
        if (!TryGet(obj, path, key, JsonValueKind.Array, "an array of numbers", required, out var v)) return null;
        var items = v.EnumerateArray().ToArray();
        if (length is { } n && items.Length != n) { Add(Join(path, key), $"must have {n} numbers, found {items.Length}"); return null; }
        var result = new double[items.Length];
        for (int i = 0; i < items.Length; i++)
        {
            if (items[i].ValueKind != JsonValueKind.Number || !double.IsFinite(items[i].GetDouble()))
            {
                Add($"{Join(path, key)}[{i}]", $"must be a finite number, found {items[i].GetRawText()}");
                return null;
            }
            result[i] = items[i].GetDouble();
        }
        return result;
    }
}
