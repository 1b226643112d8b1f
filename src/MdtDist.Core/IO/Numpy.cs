using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.IO;

/// <summary>
/// Reads numpy's <c>.npy</c> arrays and <c>.npz</c> archives (<c>np.save</c>, <c>np.savez</c>,
/// <c>np.savez_compressed</c>: a zip of <c>NAME.npy</c> entries, stored or deflated) into CPU tensors, validating every
/// field before anything is allocated: magic and version, header length, the header dictionary (<c>descr</c>,
/// <c>fortran_order</c>, <c>shape</c>), the dtype, the element count (against <see cref="MaxBytes"/> and overflow) and
/// the data length (truncated or over-long data).
/// </summary>
/// <remarks>
/// Supported dtypes: little-endian (or byte-order-free) <c>f2 f4 f8 i1 i2 i4 i8 u1 b1</c>, which map to TorchSharp's
/// Float16/Float32/Float64/Int8/Int16/Int32/Int64/UInt8/Bool; big-endian data is byte-swapped. Fortran-ordered arrays are
/// returned in C order (same values). Object arrays (pickles) are refused: they can run code.
/// </remarks>
public static class Numpy
{
    /// <summary>The largest array (in bytes) a file may make the reader allocate; raise it for genuinely huge arrays.</summary>
    public static long MaxBytes { get; set; } = Array.MaxLength;

    private const int MaxHeaderBytes = 1 << 20;
    private static readonly byte[] Magic = { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y' };

    /// <summary>Reads one <c>.npy</c> file.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">A malformed file; the message names the file and the field.</exception>
    public static Tensor LoadNpy(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"numpy array '{path}' does not exist.", path);
        using var fs = File.OpenRead(path);
        return ReadNpy(fs, fs.Length, $"'{path}'");
    }

    /// <summary>Reads every array of an <c>.npz</c> archive (entry name without <c>.npy</c> → tensor).</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">Not a zip, a corrupt or truncated entry, a malformed array, or a duplicate
    /// name; the message names the file and the entry.</exception>
    public static Dictionary<string, Tensor> LoadNpz(string path) => LoadNpz(path, null);

    /// <summary>Reads the named arrays of an <c>.npz</c> archive (all when <paramref name="names"/> is null).</summary>
    /// <exception cref="KeyNotFoundException">A requested array is absent; the message names the file and the array.</exception>
    /// <inheritdoc cref="LoadNpz(string)" path="/exception"/>
    public static Dictionary<string, Tensor> LoadNpz(string path, IReadOnlyCollection<string>? names)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"numpy archive '{path}' does not exist.", path);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            using var zip = OpenZip(path);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in zip.Entries)
            {
                if (entry.FullName.EndsWith('/')) continue;
                var name = entry.FullName.EndsWith(".npy", StringComparison.Ordinal) ? entry.FullName[..^4] : entry.FullName;
                if (!seen.Add(name)) throw new InvalidDataException($"'{path}': the archive holds '{entry.FullName}' twice.");
                if (names != null && !names.Contains(name)) continue;
                if (entry.Length > MaxBytes + MaxHeaderBytes)
                    throw new InvalidDataException($"'{path}': entry '{entry.FullName}' declares {entry.Length} bytes, more than the bound {MaxBytes} (raise Numpy.MaxBytes for genuinely huge arrays).");
                try
                {
                    using var s = entry.Open();
                    result[name] = ReadNpy(s, entry.Length, $"'{path}' entry '{entry.FullName}'");
                }
                catch (InvalidDataException) { throw; }
                catch (Exception e) when (e is IOException or NotSupportedException)
                {
                    throw new InvalidDataException($"'{path}': entry '{entry.FullName}' cannot be read ({e.Message}).", e);
                }
            }
            if (names != null)
                foreach (var n in names)
                    if (!result.ContainsKey(n))
                        throw new KeyNotFoundException($"'{path}' has no array '{n}' (it holds: {string.Join(", ", seen.OrderBy(x => x, StringComparer.Ordinal))}).");
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    private static ZipArchive OpenZip(string path)
    {
        try { return ZipFile.OpenRead(path); }
        catch (InvalidDataException e) { throw new InvalidDataException($"'{path}' is not a valid .npz (zip) archive: {e.Message}", e); }
    }

    /// <summary>Reads one array in <c>.npy</c> format from <paramref name="stream"/> whose length is <paramref name="length"/> bytes.</summary>
    internal static Tensor ReadNpy(Stream stream, long length, string source)
    {
        Span<byte> pre = stackalloc byte[10];
        if (length < 10 || ReadFully(stream, pre) < 10) throw new InvalidDataException($"{source}: too short for a .npy header ({length} bytes).");
        if (!pre[..6].SequenceEqual(Magic)) throw new InvalidDataException($"{source}: not a .npy array (bad magic).");
        int major = pre[6];
        long headerLen;
        int prefix;
        if (major == 1) { headerLen = BinaryPrimitives.ReadUInt16LittleEndian(pre[8..]); prefix = 10; }
        else if (major is 2 or 3)
        {
            Span<byte> more = stackalloc byte[2];
            if (ReadFully(stream, more) < 2) throw new InvalidDataException($"{source}: truncated .npy header.");
            Span<byte> four = stackalloc byte[4];
            pre[8..].CopyTo(four);
            more.CopyTo(four[2..]);
            headerLen = BinaryPrimitives.ReadUInt32LittleEndian(four);
            prefix = 12;
        }
        else throw new InvalidDataException($"{source}: unsupported .npy format version {major}.{pre[7]} (1, 2 and 3 are known).");
        if (headerLen > MaxHeaderBytes || prefix + headerLen > length)
            throw new InvalidDataException($"{source}: header length {headerLen} does not fit the {length}-byte array.");
        var hb = new byte[headerLen];
        if (ReadFully(stream, hb) < headerLen) throw new InvalidDataException($"{source}: truncated .npy header.");
        var header = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(hb);
        var (descr, fortran, shape) = ParseHeader(header, source);
        var (dtype, size, bigEndian) = ParseDescr(descr, source);
        long count = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new InvalidDataException($"{source}: negative dimension in shape ({string.Join(", ", shape)}).");
            try { count = checked(count * d); }
            catch (OverflowException) { throw new InvalidDataException($"{source}: shape ({string.Join(", ", shape)}) overflows."); }
        }
        long bytes;
        try { bytes = checked(count * size); }
        catch (OverflowException) { throw new InvalidDataException($"{source}: shape ({string.Join(", ", shape)}) overflows."); }
        if (bytes > MaxBytes)
            throw new InvalidDataException($"{source}: the array needs {bytes} bytes, more than the bound {MaxBytes} (raise Numpy.MaxBytes for genuinely huge arrays).");
        long available = length - prefix - headerLen;
        if (available != bytes)
            throw new InvalidDataException($"{source}: shape ({string.Join(", ", shape)}) of {descr} needs {bytes} data bytes, the array has {available}" +
                                           (available < bytes ? " (truncated)." : "."));
        var data = new byte[bytes];
        if (ReadFully(stream, data) < bytes) throw new InvalidDataException($"{source}: truncated data ({bytes} bytes expected).");
        if (bigEndian && size > 1)
            for (long i = 0; i < bytes; i += size) Array.Reverse(data, (int)i, size);
        if (dtype == ScalarType.Bool)
            foreach (var b in data)
                if (b > 1) throw new InvalidDataException($"{source}: boolean array holds byte value {b}.");
        var shapeArr = shape.ToArray();
        Tensor t;
        if (fortran && shapeArr.Length > 1)
        {
            var rev = shapeArr.Reverse().ToArray();
            using var raw = FromBytes(data, dtype, rev);
            t = raw.permute(Enumerable.Range(0, rev.Length).Reverse().Select(i => (long)i).ToArray()).contiguous();
        }
        else t = FromBytes(data, dtype, shapeArr);
        return t;
    }

    private static Tensor FromBytes(byte[] data, ScalarType dtype, long[] shape)
    {
        var t = torch.empty(shape, dtype: dtype);
        if (data.Length > 0) t.bytes = data;
        return t;
    }

    private static int ReadFully(Stream s, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = s.Read(buffer[total..]);
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    private static long ReadFully(Stream s, byte[] buffer)
    {
        long total = 0;
        while (total < buffer.Length)
        {
            int n = s.Read(buffer, (int)total, (int)Math.Min(int.MaxValue, buffer.Length - total));
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    private static (string Descr, bool Fortran, List<long> Shape) ParseHeader(string header, string source)
    {
        var p = new HeaderParser(header.Trim(), source);
        var dict = p.ParseDict();
        p.End();
        if (!dict.TryGetValue("descr", out var d) || d is not string descr) throw new InvalidDataException($"{source}: header has no string 'descr' ({header.Trim()}).");
        if (!dict.TryGetValue("fortran_order", out var f) || f is not bool fortran) throw new InvalidDataException($"{source}: header has no boolean 'fortran_order' ({header.Trim()}).");
        if (!dict.TryGetValue("shape", out var s) || s is not List<long> shape) throw new InvalidDataException($"{source}: header has no integer tuple 'shape' ({header.Trim()}).");
        if (dict.Count != 3) throw new InvalidDataException($"{source}: header has unexpected keys ({string.Join(", ", dict.Keys)}).");
        if (shape.Count > 32) throw new InvalidDataException($"{source}: {shape.Count} dimensions (at most 32).");
        return (descr, fortran, shape);
    }

    private static (ScalarType, int, bool) ParseDescr(string descr, string source)
    {
        if (descr.Length < 2) throw new InvalidDataException($"{source}: unsupported dtype '{descr}'.");
        char order = descr[0];
        if (order is not ('<' or '>' or '|' or '=')) throw new InvalidDataException($"{source}: unsupported dtype '{descr}'.");
        var code = descr[1..];
        (ScalarType t, int size) = code switch
        {
            "f2" => (ScalarType.Float16, 2),
            "f4" => (ScalarType.Float32, 4),
            "f8" => (ScalarType.Float64, 8),
            "i1" => (ScalarType.Int8, 1),
            "i2" => (ScalarType.Int16, 2),
            "i4" => (ScalarType.Int32, 4),
            "i8" => (ScalarType.Int64, 8),
            "u1" => (ScalarType.Byte, 1),
            "b1" => (ScalarType.Bool, 1),
            _ => throw new InvalidDataException($"{source}: unsupported dtype '{descr}' (supported: f2 f4 f8 i1 i2 i4 i8 u1 b1; object arrays are refused)."),
        };
        return (t, size, order == '>' || (order == '=' && !BitConverter.IsLittleEndian));
    }

    /// <summary>A parser for the Python-literal dictionary of a .npy header (strings, booleans, integer tuples).</summary>
    private sealed class HeaderParser(string text, string source)
    {
        private int _i;

        private InvalidDataException Error(string what) => new($"{source}: malformed .npy header ({what} at character {_i}): {text}");

        private void Skip() { while (_i < text.Length && char.IsWhiteSpace(text[_i])) _i++; }

        private bool TryEat(char c) { Skip(); if (_i < text.Length && text[_i] == c) { _i++; return true; } return false; }

        private void Eat(char c) { if (!TryEat(c)) throw Error($"expected '{c}'"); }

        public void End() { Skip(); if (_i != text.Length) throw Error("trailing text"); }

        public Dictionary<string, object> ParseDict()
        {
            var d = new Dictionary<string, object>(StringComparer.Ordinal);
            Eat('{');
            while (!TryEat('}'))
            {
                var key = ParseString();
                Eat(':');
                var value = ParseValue();
                if (!d.TryAdd(key, value)) throw Error($"duplicate key '{key}'");
                if (!TryEat(',')) { Eat('}'); break; }
            }
            return d;
        }

        private object ParseValue()
        {
            Skip();
            if (_i >= text.Length) throw Error("missing value");
            char c = text[_i];
            if (c is '\'' or '"') return ParseString();
            if (c == '(') return ParseTuple();
            if (text.AsSpan(_i).StartsWith("True")) { _i += 4; return true; }
            if (text.AsSpan(_i).StartsWith("False")) { _i += 5; return false; }
            throw Error("unexpected value");
        }

        private List<long> ParseTuple()
        {
            var list = new List<long>();
            Eat('(');
            while (!TryEat(')'))
            {
                Skip();
                int start = _i;
                while (_i < text.Length && char.IsAsciiDigit(text[_i])) _i++;
                if (_i < text.Length && text[_i] == 'L') _i++; // Python 2's long suffix
                var digits = text[start.._i].TrimEnd('L');
                if (digits.Length == 0 || !long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var v))
                    throw Error("expected a non-negative integer dimension");
                list.Add(v);
                if (!TryEat(',')) { Eat(')'); break; }
            }
            return list;
        }

        private string ParseString()
        {
            Skip();
            if (_i >= text.Length || text[_i] is not ('\'' or '"')) throw Error("expected a string");
            char q = text[_i++];
            int start = _i;
            while (_i < text.Length && text[_i] != q)
            {
                if (text[_i] == '\\') throw Error("escapes are not supported");
                _i++;
            }
            if (_i >= text.Length) throw Error("unterminated string");
            return text[start.._i++];
        }
    }
}
