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

    /// <summary>Reads and validates the header of a safetensors file.</summary>
    /// <returns>The tensor entries (in file order), the metadata, and the absolute offset of the data block.</returns>
    public static (IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long DataOffset) ReadHeader(string path)
    {
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
        JsonDocument doc;
        try { doc = JsonDocument.Parse(Encoding.UTF8.GetString(headerBytes).TrimEnd(' ', '\0')); }
        catch (JsonException e) { throw Bad(path, $"header is not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, "header is not a JSON object");
        var tensors = new List<SafeTensorInfo>();
        var meta = new Dictionary<string, string>();
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, "__metadata__ is not an object");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"__metadata__ value '{m.Name}' is not a string");
                    meta[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            var v = prop.Value;
            if (v.ValueKind != JsonValueKind.Object || !v.TryGetProperty("dtype", out var dt) || !v.TryGetProperty("shape", out var sh) || !v.TryGetProperty("data_offsets", out var off))
                throw Bad(path, $"tensor '{prop.Name}' lacks dtype, shape or data_offsets");
            string dtype = dt.GetString() ?? "";
            if (!DTypes.ContainsKey(dtype)) throw Bad(path, $"tensor '{prop.Name}' has unknown dtype '{dtype}'");
            long[] shape;
            try { shape = sh.EnumerateArray().Select(e => e.GetInt64()).ToArray(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(path, $"tensor '{prop.Name}' has a malformed shape"); }
            if (shape.Any(d => d < 0)) throw Bad(path, $"tensor '{prop.Name}' has a negative dimension");
            long[] o;
            try { o = off.EnumerateArray().Select(e => e.GetInt64()).ToArray(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(path, $"tensor '{prop.Name}' has malformed data_offsets"); }
            if (o.Length != 2 || o[0] < 0 || o[1] < o[0]) throw Bad(path, $"tensor '{prop.Name}' has invalid data_offsets [{string.Join(", ", o)}]");
            long elems = 1;
            foreach (var d in shape) elems = checked(elems * d);
            long expected = checked(elems * DTypes[dtype].Size);
            if (expected != o[1] - o[0])
                throw Bad(path, $"tensor '{prop.Name}': shape [{string.Join(", ", shape)}] × {dtype} needs {expected} bytes, data_offsets give {o[1] - o[0]}");
            tensors.Add(new SafeTensorInfo(prop.Name, dtype, shape, o[0], o[1]));
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

    /// <summary>Loads every tensor of a safetensors file onto the CPU, in its stored dtype.</summary>
    public static Dictionary<string, Tensor> Load(string path) => Load(path, null, null);

    /// <summary>Loads every tensor, converting floating tensors to <paramref name="floatDType"/> and moving all to <paramref name="device"/>.</summary>
    public static Dictionary<string, Tensor> Load(string path, ScalarType? floatDType, Device? device)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file '{path}' does not exist.", path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var (infos, _, dataOffset) = ReadHeader(fs, path);
        var result = new Dictionary<string, Tensor>();
        foreach (var info in infos)
        {
            var (type, _) = DTypes[info.DType];
            var t = torch.empty(info.Shape, dtype: type);
            long len = info.End - info.Begin;
            if (len > 0)
            {
                var buffer = new byte[len];
                fs.Seek(dataOffset + info.Begin, SeekOrigin.Begin);
                fs.ReadExactly(buffer);
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian hosts are not supported.");
                t.bytes = buffer;
            }
            if (floatDType is { } fd && t.is_floating_point() && t.dtype != fd)
            {
                var c = t.to(fd); t.Dispose(); t = c;
            }
            if (device is not null && t.device != device)
            {
                var c = t.to(device); t.Dispose(); t = c;
            }
            result[info.Name] = t.DetachFromDisposeScope();
        }
        return result;
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
