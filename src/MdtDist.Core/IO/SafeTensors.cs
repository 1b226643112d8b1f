using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.IO;

/// <summary>One tensor entry of a safetensors header.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="DType">The safetensors dtype string (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL).</param>
/// <param name="Shape">Shape.</param>
/// <param name="Begin">Start offset relative to the data block.</param>
/// <param name="End">End offset (exclusive) relative to the data block.</param>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reads and writes the safetensors format (https://github.com/huggingface/safetensors) with the same validation as
/// the reference implementation: header size bound, JSON well-formed, dtype known, offsets in range, contiguous and
/// non-overlapping, and shape × element size equal to the byte length. Files are written atomically.
/// </summary>
public static class SafeTensors
{
    /// <summary>The largest header accepted (100 MB, as the reference implementation).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    private static InvalidDataException Bad(string path, string what) =>
        new($"safetensors file '{path}' is invalid: {what}.");

    /// <summary>The most dimensions a tensor may have (as libtorch, which stores sizes in a small vector).</summary>
    public const int MaxRank = 64;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads and validates the header of a safetensors file.</summary>
    /// <returns>The tensor entries (in file order), the metadata, and the absolute offset of the data block.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file: header length beyond
    /// <see cref="MaxHeaderBytes"/> or the file, a header that is not UTF-8 JSON or not an object, a key twice in any
    /// object (a tensor name, a field, a metadata key), a field of the wrong JSON type, an unknown dtype, a rank above
    /// <see cref="MaxRank"/>, an element count that overflows 64 bits, offsets that disagree with the shape, overlap,
    /// leave gaps or do not cover the data block. The message names the file and the tensor or key.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static (IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long DataOffset) ReadHeader(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file '{path}' does not exist.", path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        return ReadHeader(fs, path);
    }

    private static (IReadOnlyList<SafeTensorInfo>, IReadOnlyDictionary<string, string>, long) ReadHeader(FileStream fs, string path)
    {
        long fileLength = fs.Length;
        if (fileLength < 8) throw Bad(path, $"file is {fileLength} bytes, too short for the 8-byte header length");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (n > MaxHeaderBytes) throw Bad(path, $"header length {n} exceeds the limit of {MaxHeaderBytes} bytes");
        if ((long)n > fileLength - 8) throw Bad(path, $"header length {n} exceeds the file size {fileLength} (truncated file?)");
        var headerBytes = new byte[n];
        fs.ReadExactly(headerBytes);
        string headerText;
        try { headerText = StrictUtf8.GetString(headerBytes); }
        catch (DecoderFallbackException e) { throw Bad(path, $"header is not valid UTF-8 (byte {e.Index} of the header)"); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(headerText.TrimEnd(' ', '\0')); }
        catch (JsonException e) { throw Bad(path, $"header is not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, $"header is a JSON {Kind(doc.RootElement)}, expected an object");
        var tensors = new List<SafeTensorInfo>();
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (!seen.Add(prop.Name)) throw Bad(path, $"the name '{prop.Name}' appears twice in the header (one entry would be dropped)");
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, $"__metadata__ is a JSON {Kind(prop.Value)}, expected an object of strings");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (meta.ContainsKey(m.Name)) throw Bad(path, $"__metadata__ key '{m.Name}' appears twice");
                    if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"__metadata__ value '{m.Name}' is a JSON {Kind(m.Value)}, expected a string");
                    meta[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            tensors.Add(ParseEntry(path, prop));
        }
        long dataOffset = 8 + (long)n;
        long dataLength = fileLength - dataOffset;
        long cursor = 0;
        foreach (var t in tensors.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (t.Begin != cursor) throw Bad(path, $"tensor '{t.Name}' starts at {t.Begin}, expected {cursor} (overlapping or gapped data_offsets)");
            cursor = t.End;
        }
        if (cursor != dataLength) throw Bad(path, $"tensors cover {cursor} bytes but the data block has {dataLength} (truncated or padded file?)");
        return (tensors, meta, dataOffset);
    }

    private static SafeTensorInfo ParseEntry(string path, JsonProperty prop)
    {
        var name = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw Bad(path, $"tensor '{name}' is a JSON {Kind(v)}, expected an object with dtype, shape and data_offsets");
        JsonElement? dt = null, sh = null, off = null;
        foreach (var f in v.EnumerateObject())
        {
            ref JsonElement? slot = ref dt;
            switch (f.Name)
            {
                case "dtype": slot = ref dt; break;
                case "shape": slot = ref sh; break;
                case "data_offsets": slot = ref off; break;
                default: continue; // unknown fields are ignored, as the reference parser does
            }
            if (slot is not null) throw Bad(path, $"tensor '{name}' has the field '{f.Name}' twice");
            slot = f.Value;
        }
        if (dt is not { } dtype || sh is not { } shapeEl || off is not { } offEl)
            throw Bad(path, $"tensor '{name}' lacks {string.Join(" and ", new[] { dt is null ? "dtype" : null, sh is null ? "shape" : null, off is null ? "data_offsets" : null }.Where(x => x is not null))}");
        if (dtype.ValueKind != JsonValueKind.String) throw Bad(path, $"tensor '{name}': dtype is a JSON {Kind(dtype)}, expected a string such as \"F32\"");
        string dtypeName = dtype.GetString()!;
        if (!DTypes.TryGetValue(dtypeName, out var dtInfo)) throw Bad(path, $"tensor '{name}' has unknown dtype '{dtypeName}' (known: {string.Join(", ", DTypes.Keys)})");
        var shape = Integers(path, name, "shape", shapeEl, MaxRank);
        var o = Integers(path, name, "data_offsets", offEl, 2);
        if (o.Length != 2 || o[1] < o[0]) throw Bad(path, $"tensor '{name}' has invalid data_offsets [{string.Join(", ", o)}] (expected [begin, end] with begin <= end)");
        long elems = 1;
        foreach (var d in shape)
        {
            if (d != 0 && elems > long.MaxValue / d) { elems = -1; break; }
            elems *= d;
        }
        if (elems < 0 || elems > long.MaxValue / dtInfo.Size)
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] × {dtypeName} has more bytes than fit in 64 bits");
        long expected = elems * dtInfo.Size;
        if (expected != o[1] - o[0])
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] × {dtypeName} needs {expected} bytes, data_offsets give {o[1] - o[0]}");
        return new SafeTensorInfo(name, dtypeName, shape, o[0], o[1]);
    }

    /// <summary>A JSON array of non-negative integers that fit in 64 bits, at most <paramref name="max"/> long.</summary>
    private static long[] Integers(string path, string tensor, string field, JsonElement e, int max)
    {
        if (e.ValueKind != JsonValueKind.Array) throw Bad(path, $"tensor '{tensor}': {field} is a JSON {Kind(e)}, expected an array of non-negative integers");
        int len = e.GetArrayLength();
        if (len > max) throw Bad(path, $"tensor '{tensor}': {field} has {len} entries, at most {max} are allowed");
        var r = new long[len];
        int i = 0;
        foreach (var x in e.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt64(out var v) || v < 0)
                throw Bad(path, $"tensor '{tensor}': {field}[{i}] is {Trunc(x.GetRawText())}, expected a non-negative integer below 2^63");
            r[i++] = v;
        }
        return r;
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.True or JsonValueKind.False => "boolean",
        var k => k.ToString().ToLowerInvariant(),
    };

    private static string Trunc(string s) => s.Length <= 40 ? s : s[..40] + "...";

    /// <summary>Loads every tensor of a safetensors file onto the CPU, in its stored dtype.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file (see <see cref="ReadHeader(string)"/>),
    /// or its tensors hold more than <see cref="ReadLimits.MaxAllocationBytes"/>.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static Dictionary<string, Tensor> Load(string path) => Load(path, null, null);

    /// <summary>Loads every tensor, converting floating tensors to <paramref name="floatDType"/> and moving all to <paramref name="device"/>.</summary>
    /// <remarks>The allocation is bounded by the file: the header must account for every byte of the data block, so
    /// the tensors hold exactly the file's data (checked against <see cref="ReadLimits.MaxAllocationBytes"/> before
    /// anything is allocated). Tensors of any size are read in chunks, without a managed copy of the whole tensor.</remarks>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file (see <see cref="ReadHeader(string)"/>),
    /// or its tensors hold more than <see cref="ReadLimits.MaxAllocationBytes"/>.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static Dictionary<string, Tensor> Load(string path, ScalarType? floatDType, Device? device)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file '{path}' does not exist.", path);
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian hosts are not supported.");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var (infos, _, dataOffset) = ReadHeader(fs, path);
        long total = fs.Length - dataOffset;
        ReadLimits.Check(total, () => $"safetensors file '{path}' holds {total} bytes of tensors");
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var info in infos)
            {
                var (type, size) = DTypes[info.DType];
                var t = torch.empty(info.Shape, dtype: type);
                result[info.Name] = t;
                long len = info.End - info.Begin;
                if (len > 0)
                {
                    fs.Seek(dataOffset + info.Begin, SeekOrigin.Begin);
                    ReadInto(t, fs, len, size);
                }
                if (floatDType is { } fd && t.is_floating_point() && t.dtype != fd)
                {
                    var c = t.to(fd); t.Dispose(); t = c; result[info.Name] = t;
                }
                if (device is not null && t.device != device)
                {
                    var c = t.to(device); t.Dispose(); t = c; result[info.Name] = t;
                }
                t.DetachFromDisposeScope();
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Bytes read per chunk (a multiple of every element size).</summary>
    internal static int ChunkBytes { get; set; } = 16 << 20;

    /// <summary>Fills the contiguous tensor <paramref name="t"/> with <paramref name="len"/> bytes from <paramref name="fs"/>, chunk by chunk.</summary>
    private static void ReadInto(Tensor t, Stream fs, long len, int elementSize)
    {
        if (len <= ChunkBytes)
        {
            var buffer = new byte[len];
            fs.ReadExactly(buffer);
            t.bytes = buffer;
            return;
        }
        int chunkElems = ChunkBytes / elementSize;
        var chunk = new byte[(long)chunkElems * elementSize];
        using var flat = t.view(-1);
        long elems = len / elementSize;
        for (long e = 0; e < elems; e += chunkElems)
        {
            int k = (int)Math.Min(chunkElems, elems - e);
            var span = chunk.AsSpan(0, k * elementSize);
            fs.ReadExactly(span);
            using var part = flat.narrow(0, e, k);
            part.bytes = span;
        }
    }

    /// <summary>
    /// Writes tensors to <paramref name="path"/> in the safetensors layout (names sorted, header padded with spaces
    /// to 8 bytes). The file is written to a temporary file in the same folder and renamed, so an existing file is
    /// never left half-written.
    /// </summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long cursor = 0;
        var blobs = new List<byte[]>();
        foreach (var name in names)
        {
            var t = tensors[name];
            var dtype = DTypes.FirstOrDefault(kv => kv.Value.Type == t.dtype).Key
                        ?? throw new ArgumentException($"tensor '{name}' has dtype {t.dtype}, which safetensors cannot store.", nameof(tensors));
            using var cpu = t.detach().cpu().contiguous();
            var bytes = cpu.bytes.ToArray();
            header[name] = new Dictionary<string, object> { ["dtype"] = dtype, ["shape"] = t.shape, ["data_offsets"] = new[] { cursor, cursor + bytes.Length } };
            cursor += bytes.Length;
            blobs.Add(bytes);
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        AtomicFile.Write(path, fs =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)(json.Length + pad));
            fs.Write(len);
            fs.Write(json);
            for (int i = 0; i < pad; i++) fs.WriteByte((byte)' ');
            foreach (var blob in blobs) fs.Write(blob);
        });
    }
}
