using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace MdtDist.Fuzz;

/// <summary>
/// Seeded mutations: byte flips, interesting bytes, truncation, insertion, deletion, 8-byte length edits; for JSON
/// (and safetensors headers) type swaps, huge numbers, nulls, removed and duplicated keys, dtype swaps; for PLY headers
/// count and property edits. Every draw comes from the given <see cref="Random"/>, so an input is reproducible from
/// (seed, index).
/// </summary>
public static class Mutator
{
    private static readonly string[] HugeNumbers =
    {
        "0", "-1", "1", "2", "3", "7", "0.5", "-0.0", "1e-300", "65536", "1000000000", "2147483647", "2147483648", "-2147483648",
        "4294967297", "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1e308", "-1e308", "1e999", "1.5",
    };

    /// <summary>Applies one mutation to one file of <paramref name="c"/> chosen by <paramref name="target"/>'s weights.</summary>
    public static void MutateOne(FuzzCase c, FuzzTarget target, Random rng)
    {
        var names = c.Files.Keys.Where(k => target.Weight(k) > 0).OrderBy(k => k, StringComparer.Ordinal).ToArray();
        if (names.Length == 0) return;
        double total = names.Sum(target.Weight), pick = rng.NextDouble() * total;
        string name = names[^1];
        foreach (var n in names)
        {
            pick -= target.Weight(n);
            if (pick <= 0) { name = n; break; }
        }
        var bytes = c.Files[name];
        byte[] result;
        string what;
        switch (target.KindOf(name))
        {
            case FileKind.Json when rng.NextDouble() < 0.75:
                (result, what) = MutateJsonText(bytes, rng, out var dup);
                if (dup is not null) c.Flags.Add("json-duplicate:" + name);
                break;
            case FileKind.SafeTensors when rng.NextDouble() < 0.7:
                (result, what) = MutateSafeTensors(bytes, rng, c);
                break;
            case FileKind.Ply when rng.NextDouble() < 0.6:
                (result, what) = MutatePlyHeader(bytes, rng);
                break;
            default:
                (result, what) = MutateBytes(bytes, rng);
                break;
        }
        c.Files[name] = result;
        if (!result.AsSpan().SequenceEqual(bytes)) c.Touched.Add(name);
        c.Mutations.Add($"{name}: {what}");
    }

    /// <summary>A generic byte-level mutation.</summary>
    public static (byte[] Bytes, string What) MutateBytes(byte[] b, Random rng)
    {
        var r = (byte[])b.Clone();
        int op = rng.Next(7);
        if (r.Length == 0) op = 3;
        switch (op)
        {
            case 0:
            {
                int k = 1 + rng.Next(8);
                for (int i = 0; i < k; i++) { int p = rng.Next(r.Length); r[p] ^= (byte)(1 << rng.Next(8)); }
                return (r, $"flip {k} bits");
            }
            case 1:
            {
                int p = rng.Next(r.Length);
                byte[] vals = { 0, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x0A };
                r[p] = vals[rng.Next(vals.Length)];
                return (r, $"byte {p} = 0x{r[p]:X2}");
            }
            case 2:
            {
                int n = rng.Next(r.Length);
                return (r[..n], $"truncate to {n}");
            }
            case 3:
            {
                int p = rng.Next(r.Length + 1), n = 1 + rng.Next(64);
                var ins = new byte[n];
                rng.NextBytes(ins);
                return (r[..p].Concat(ins).Concat(r[p..]).ToArray(), $"insert {n} at {p}");
            }
            case 4:
            {
                int p = rng.Next(r.Length), n = 1 + rng.Next(Math.Min(64, r.Length - p));
                return (r[..p].Concat(r[(p + n)..]).ToArray(), $"delete {n} at {p}");
            }
            case 5:
            {
                if (r.Length < 8) goto case 0;
                int p = rng.Next(r.Length - 7);
                ulong[] vals = { 0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000001, long.MaxValue, ulong.MaxValue };
                BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(p), vals[rng.Next(vals.Length)]);
                return (r, $"u64 at {p}");
            }
            default:
            {
                int p = rng.Next(r.Length), n = 1 + rng.Next(Math.Min(256, r.Length - p));
                int q = rng.Next(r.Length + 1);
                var chunk = r[p..(p + n)];
                return (r[..q].Concat(chunk).Concat(r[q..]).ToArray(), $"duplicate {n} bytes");
            }
        }
    }

    /// <summary>A structure-aware JSON mutation; falls back to bytes when the text is not JSON.</summary>
    public static (byte[] Bytes, string What) MutateJsonText(byte[] bytes, Random rng, out string? duplicatedKey)
    {
        duplicatedKey = null;
        try
        {
            var root = JsonNode.Parse(bytes);
            var (mutated, what, dup) = MutateJson(root, rng);
            duplicatedKey = dup?.Key;
            return (Serialize(mutated, dup), what);
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            // Not JSON, or JSON that System.Text.Json's node model cannot hold (a key twice).
            return MutateBytes(bytes, rng);
        }
    }

    /// <summary>One JSON edit; returns the new root, a description and an optional duplicated key (object, key) to write twice.</summary>
    public static (JsonNode? Root, string What, (JsonObject Obj, string Key, JsonNode? Value)? Dup) MutateJson(JsonNode? root, Random rng)
    {
        var nodes = new List<(JsonNode? Node, JsonNode? Parent, string? Key, int Index, string Path)>();
        Collect(root, null, null, -1, "$", nodes);
        var (node, parent, key, index, path) = nodes[rng.Next(nodes.Count)];
        int op = rng.Next(8);
        JsonNode? replacement;
        string what;
        switch (op)
        {
            case 0:
                replacement = RandomOtherType(node, rng);
                what = $"type swap at {path} -> {Describe(replacement)}";
                break;
            case 1:
            case 2:
            {
                if (node is JsonArray arr0 && arr0.Count > 0 && rng.NextDouble() < 0.5)
                {
                    int i = rng.Next(arr0.Count);
                    var n0 = HugeNumbers[rng.Next(HugeNumbers.Length)];
                    arr0[i] = JsonNode.Parse(n0);
                    return (root, $"number {n0} at {path}[{i}]", null);
                }
                var n = HugeNumbers[rng.Next(HugeNumbers.Length)];
                replacement = JsonNode.Parse(n);
                what = $"number {n} at {path}";
                break;
            }
            case 3:
                replacement = null;
                what = $"null at {path}";
                break;
            case 4:
                if (parent is JsonObject po && key is not null)
                {
                    po.Remove(key);
                    return (root, $"remove {path}", null);
                }
                if (parent is JsonArray pa && index >= 0)
                {
                    pa.RemoveAt(index);
                    return (root, $"remove {path}", null);
                }
                replacement = null;
                what = $"null at {path}";
                break;
            case 5:
            {
                var objs = nodes.Where(x => x.Node is JsonObject o && o.Count > 0).ToList();
                if (objs.Count == 0) goto case 3;
                var (on, _, _, _, opath) = objs[rng.Next(objs.Count)];
                var obj = (JsonObject)on!;
                var dk = obj.ElementAt(rng.Next(obj.Count)).Key;
                JsonNode? dv = rng.NextDouble() < 0.5 ? obj[dk]?.DeepClone() : RandomOtherType(obj[dk], rng);
                return (root, $"duplicate key {opath}.{dk}", (obj, dk, dv));
            }
            case 6:
                if (node is JsonArray arr && rng.NextDouble() < 0.7)
                {
                    if (arr.Count > 0 && rng.NextDouble() < 0.5) { arr.RemoveAt(rng.Next(arr.Count)); return (root, $"shrink array {path}", null); }
                    arr.Add(arr.Count > 0 ? arr[rng.Next(arr.Count)]?.DeepClone() : JsonValue.Create(1));
                    return (root, $"grow array {path}", null);
                }
                if (node is JsonValue sv && sv.TryGetValue<string>(out var s))
                {
                    string[] strs = { "", "F64", "F16", "BF16", "I64", "BOOL", "U8", "ape", "rope", "swin", "full", "x", s + s, new string('a', 300), "../x", "1", "null" };
                    replacement = JsonValue.Create(strs[rng.Next(strs.Length)]);
                    what = $"string at {path} -> '{replacement}'";
                    break;
                }
                goto case 0;
            default:
                if (parent is JsonObject pobj && key is not null)
                {
                    var nk = rng.NextDouble() < 0.5 ? key + "_x" : key.ToUpperInvariant();
                    if (pobj.ContainsKey(nk)) goto case 3;
                    var v = pobj[key];
                    pobj.Remove(key);
                    pobj[nk] = v;
                    return (root, $"rename {path} -> {nk}", null);
                }
                goto case 0;
        }
        if (parent is null) return (replacement, what, null);
        if (parent is JsonObject o2) o2[key!] = replacement;
        else ((JsonArray)parent)[index] = replacement;
        return (root, what, null);
    }

    private static string Describe(JsonNode? n) => n is null ? "null" : n.ToJsonString().Length > 40 ? n.GetValueKind().ToString() : n.ToJsonString();

    private static JsonNode? RandomOtherType(JsonNode? node, Random rng)
    {
        var kind = node?.GetValueKind() ?? JsonValueKind.Null;
        while (true)
        {
            JsonNode? r;
            int k = rng.Next(6);
            r = k switch
            {
                0 => JsonValue.Create("x"),
                1 => JsonNode.Parse(HugeNumbers[rng.Next(HugeNumbers.Length)]),
                2 => JsonValue.Create(rng.NextDouble() < 0.5),
                3 => null,
                4 => new JsonArray(JsonValue.Create(1), JsonValue.Create("a")),
                _ => new JsonObject { ["a"] = 1 },
            };
            var rk = r?.GetValueKind() ?? JsonValueKind.Null;
            bool sameKind = rk == kind || (rk is JsonValueKind.True or JsonValueKind.False && kind is JsonValueKind.True or JsonValueKind.False);
            if (!sameKind) return r;
        }
    }

    private static void Collect(JsonNode? n, JsonNode? parent, string? key, int index, string path, List<(JsonNode?, JsonNode?, string?, int, string)> acc)
    {
        acc.Add((n, parent, key, index, path));
        if (n is JsonObject o)
            foreach (var (k, v) in o.ToList()) Collect(v, o, k, -1, path + "." + k, acc);
        else if (n is JsonArray a)
            for (int i = 0; i < a.Count; i++) Collect(a[i], a, null, i, $"{path}[{i}]", acc);
    }

    /// <summary>Serialises <paramref name="root"/>, writing the duplicated key of <paramref name="dup"/> twice.</summary>
    public static byte[] Serialize(JsonNode? root, (JsonObject Obj, string Key, JsonNode? Value)? dup)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { SkipValidation = true }))
            Write(w, root, dup);
        return ms.ToArray();
    }

    private static void Write(Utf8JsonWriter w, JsonNode? n, (JsonObject Obj, string Key, JsonNode? Value)? dup)
    {
        switch (n)
        {
            case null:
                w.WriteNullValue();
                break;
            case JsonObject o:
                w.WriteStartObject();
                foreach (var (k, v) in o)
                {
                    w.WritePropertyName(k);
                    Write(w, v, dup);
                }
                if (dup is { } d && ReferenceEquals(d.Obj, o))
                {
                    w.WritePropertyName(d.Key);
                    Write(w, d.Value, null);
                }
                w.WriteEndObject();
                break;
            case JsonArray a:
                w.WriteStartArray();
                foreach (var v in a) Write(w, v, dup);
                w.WriteEndArray();
                break;
            default:
                n.WriteTo(w);
                break;
        }
    }

    /// <summary>A safetensors-aware mutation: header length edits or a JSON edit of the header (length re-encoded).</summary>
    public static (byte[] Bytes, string What) MutateSafeTensors(byte[] b, Random rng, FuzzCase c)
    {
        if (b.Length < 8) return MutateBytes(b, rng);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(b);
        if (n > (ulong)(b.Length - 8)) return MutateBytes(b, rng);
        var header = b.AsSpan(8, (int)n).ToArray();
        var data = b.AsSpan(8 + (int)n).ToArray();
        double u = rng.NextDouble();
        if (u < 0.2)
        {
            ulong[] lens = { 0, n - 1, n + 1, n + 8, n - 8, (ulong)b.Length, 100_000_001, 1UL << 63, ulong.MaxValue, (ulong)rng.Next(b.Length) };
            var r = (byte[])b.Clone();
            var nl = lens[rng.Next(lens.Length)];
            BinaryPrimitives.WriteUInt64LittleEndian(r, nl);
            return (r, $"header length {n} -> {nl}");
        }
        byte[] newHeader;
        string what;
        if (u < 0.3)
        {
            // An invalid UTF-8 byte inside a tensor name (the format requires valid UTF-8).
            if (!IsValidUtf8(header)) return MutateBytes(b, rng); // already invalid: the text offsets below would not map to bytes
            var text = Encoding.UTF8.GetString(header);
            int q = text.Length < 2 ? -1 : text.IndexOf('"', 1 + rng.Next(text.Length - 1));
            if (q < 0) q = text.IndexOf('"');
            if (q < 0) return MutateBytes(b, rng);
            var pre = Encoding.UTF8.GetBytes(text[..(q + 1)]);
            byte[][] bad = { new byte[] { 0xFF }, new byte[] { 0xC3 }, new byte[] { 0xED, 0xA0, 0x80 }, new byte[] { 0xC0, 0xAF } };
            newHeader = pre.Concat(bad[rng.Next(bad.Length)]).Concat(header[pre.Length..]).ToArray();
            what = "invalid UTF-8 in the header";
        }
        else
        {
            try
            {
                var root = JsonNode.Parse(Encoding.UTF8.GetString(header).TrimEnd(' '));
                (JsonNode? mutated, what, var dup) = MutateJson(root, rng);
                if (u < 0.4 && root is JsonObject ro && ro.Count > 0)
                {
                    // A duplicated tensor name with a consistent entry.
                    var k = ro.Where(kv => kv.Key != "__metadata__").Select(kv => kv.Key).FirstOrDefault();
                    if (k is not null) { dup = (ro, k, ro[k]?.DeepClone()); mutated = ro; what = $"duplicate tensor name '{k}'"; }
                }
                newHeader = Serialize(mutated, dup);
            }
            catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
            {
                return MutateBytes(b, rng);
            }
        }
        int pad = rng.NextDouble() < 0.8 ? (8 - newHeader.Length % 8) % 8 : 0;
        var outb = new byte[8 + newHeader.Length + pad + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(outb, (ulong)(newHeader.Length + pad));
        newHeader.CopyTo(outb, 8);
        for (int i = 0; i < pad; i++) outb[8 + newHeader.Length + i] = (byte)' ';
        data.CopyTo(outb, 8 + newHeader.Length + pad);
        return (outb, what);
    }

    /// <summary>
    /// The oracle for safetensors files, computed on the final bytes independently of the reader: a header that is
    /// not valid UTF-8, or a JSON object in it with a key twice, makes the file invalid (the format requires UTF-8 and
    /// the reference parser rejects duplicate fields). Returns the reason, or null when the oracle knows nothing.
    /// </summary>
    public static string? SafeTensorsMustReject(byte[] b)
    {
        if (b.Length < 8) return null;
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(b);
        if (n > (ulong)(b.Length - 8)) return null;
        var header = b.AsSpan(8, (int)n).ToArray();
        if (!IsValidUtf8(header)) return "the header is not valid UTF-8";
        try
        {
            var reader = new Utf8JsonReader(header);
            var stack = new Stack<HashSet<string>>();
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject: stack.Push(new HashSet<string>(StringComparer.Ordinal)); break;
                    case JsonTokenType.EndObject: stack.Pop(); break;
                    case JsonTokenType.PropertyName:
                        var k = reader.GetString()!;
                        if (!stack.Peek().Add(k)) return $"the header has the key '{k}' twice";
                        break;
                }
            }
        }
        catch (JsonException) { return null; }
        catch (InvalidOperationException) { return null; }
        return null;
    }

    /// <summary>True when <paramref name="b"/> is well-formed UTF-8 (strict decoder).</summary>
    public static bool IsValidUtf8(byte[] b)
    {
        try { _ = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(b); return true; }
        catch (DecoderFallbackException) { return false; }
    }

    /// <summary>A PLY header edit: vertex count, property type or name, format line, a removed or duplicated line.</summary>
    public static (byte[] Bytes, string What) MutatePlyHeader(byte[] b, Random rng)
    {
        var end = Encoding.ASCII.GetBytes("end_header\n");
        int he = b.AsSpan().IndexOf(end);
        if (he < 0) return MutateBytes(b, rng);
        he += end.Length;
        var lines = Encoding.ASCII.GetString(b, 0, he).Split('\n').ToList();
        lines.RemoveAt(lines.Count - 1);
        int li = rng.Next(lines.Count);
        string what;
        int op = rng.Next(5);
        var counts = new[] { "0", "1", "-1", "2147483647", "2147483648", "4294967297", "1000000000", "99999999999999999999", "x" };
        var types = new[] { "double", "uchar", "int", "float64", "list uchar float", "char", "short", "bogus" };
        switch (op)
        {
            case 0:
            {
                int vi = lines.FindIndex(l => l.StartsWith("element", StringComparison.Ordinal));
                if (vi < 0) vi = li;
                var v = counts[rng.Next(counts.Length)];
                lines[vi] = "element vertex " + v;
                what = "vertex count " + v;
                break;
            }
            case 1:
            {
                var props = Enumerable.Range(0, lines.Count).Where(i => lines[i].StartsWith("property", StringComparison.Ordinal)).ToList();
                int pi = props.Count > 0 ? props[rng.Next(props.Count)] : li;
                var parts = lines[pi].Split(' ');
                var t = types[rng.Next(types.Length)];
                lines[pi] = "property " + t + " " + parts[^1];
                what = $"property type -> {t}";
                break;
            }
            case 2:
                lines.RemoveAt(li);
                what = $"remove header line {li}";
                break;
            case 3:
                lines.Insert(li, lines[li]);
                what = $"duplicate header line {li}";
                break;
            default:
            {
                string[] alt = { "format ascii 1.0", "format binary_big_endian 1.0", "format binary_little_endian 2.0", "element face 3", "comment " + new string('c', 200), "property float " + "x", "ply" };
                var a = alt[rng.Next(alt.Length)];
                lines.Insert(li, a);
                what = $"insert '{a}' at line {li}";
                break;
            }
        }
        var head = Encoding.ASCII.GetBytes(string.Join("\n", lines) + "\nend_header\n");
        return (head.Concat(b[he..]).ToArray(), what);
    }

    /// <summary>Writes <paramref name="v"/> invariantly (report text).</summary>
    public static string Inv(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
