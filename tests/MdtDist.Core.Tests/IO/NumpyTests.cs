using System.IO.Compression;
using System.Text;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.IO;

public class NumpyTests
{
    /// <summary>Builds a .npy file as numpy's format spec lays it out (magic, version, header padded to 64 bytes, data).</summary>
    internal static byte[] Npy(string descr, long[] shape, byte[] data, bool fortran = false, int major = 1, string? rawHeader = null)
    {
        var shapeText = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape) + ")";
        var dict = rawHeader ?? $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, 'shape': {shapeText}, }}";
        int prefix = major == 1 ? 10 : 12;
        int total = prefix + dict.Length + 1;
        int pad = (64 - total % 64) % 64;
        var header = dict + new string(' ', pad) + "\n";
        using var ms = new MemoryStream();
        ms.Write(new byte[] { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)major, 0 });
        if (major == 1) ms.Write(BitConverter.GetBytes((ushort)header.Length));
        else ms.Write(BitConverter.GetBytes((uint)header.Length));
        ms.Write(Encoding.Latin1.GetBytes(header));
        ms.Write(data);
        return ms.ToArray();
    }

    private static byte[] Floats(params float[] v) => v.SelectMany(BitConverter.GetBytes).ToArray();

    private static string Temp(byte[] bytes, string ext)
    {
        var p = Path.Combine(Path.GetTempPath(), $"mdtdist-npy-{Guid.NewGuid():N}{ext}");
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private static string Npz(CompressionLevel level, params (string Name, byte[] Bytes)[] entries)
    {
        var p = Path.Combine(Path.GetTempPath(), $"mdtdist-npz-{Guid.NewGuid():N}.npz");
        using (var zip = ZipFile.Open(p, ZipArchiveMode.Create))
            foreach (var (name, bytes) in entries)
            {
                var e = zip.CreateEntry(name, level);
                using var s = e.Open();
                s.Write(bytes);
            }
        return p;
    }

    [Fact]
    public void ReadsDtypesShapesAndOrders()
    {
        var f = Temp(Npy("<f4", new long[] { 2, 3 }, Floats(1, 2, 3, 4, 5, 6)), ".npy");
        using (var t = Numpy.LoadNpy(f))
        {
            Assert.Equal(ScalarType.Float32, t.dtype);
            Assert.Equal(new long[] { 2, 3 }, t.shape);
            Assert.Equal(6f, t[1, 2].item<float>());
        }
        // Fortran order: memory holds columns; values come back in C order.
        var fo = Temp(Npy("<f4", new long[] { 2, 3 }, Floats(1, 4, 2, 5, 3, 6), fortran: true), ".npy");
        using (var t = Numpy.LoadNpy(fo)) Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6 }, t.data<float>().ToArray());
        // Big-endian float64, version 2 header.
        var be = BitConverter.GetBytes(2.5).Reverse().Concat(BitConverter.GetBytes(-1.0).Reverse()).ToArray();
        var b = Temp(Npy(">f8", new long[] { 2 }, be, major: 2), ".npy");
        using (var t = Numpy.LoadNpy(b)) Assert.Equal(new[] { 2.5, -1.0 }, t.data<double>().ToArray());
        var u = Temp(Npy("|u1", new long[] { 1, 3 }, new byte[] { 0, 63, 255 }), ".npy");
        using (var t = Numpy.LoadNpy(u)) { Assert.Equal(ScalarType.Byte, t.dtype); Assert.Equal(new byte[] { 0, 63, 255 }, t.data<byte>().ToArray()); }
        var sc = Temp(Npy("<i8", Array.Empty<long>(), BitConverter.GetBytes(7L), rawHeader: "{'descr': '<i8', 'fortran_order': False, 'shape': (), }"), ".npy");
        using (var t = Numpy.LoadNpy(sc)) { Assert.Equal(0, t.dim()); Assert.Equal(7L, t.item<long>()); }
        var empty = Temp(Npy("<f4", new long[] { 0, 8 }, Array.Empty<byte>()), ".npy");
        using (var t = Numpy.LoadNpy(empty)) Assert.Equal(new long[] { 0, 8 }, t.shape);
    }

    [Fact]
    public void NpzWithStoredAndDeflatedEntries()
    {
        foreach (var level in new[] { CompressionLevel.NoCompression, CompressionLevel.Optimal })
        {
            var p = Npz(level, ("a.npy", Npy("<f4", new long[] { 2 }, Floats(1, 2))), ("b.npy", Npy("|u1", new long[] { 1 }, new byte[] { 9 })));
            var all = Numpy.LoadNpz(p);
            Assert.Equal(new[] { "a", "b" }, all.Keys.OrderBy(k => k));
            Assert.Equal(new float[] { 1, 2 }, all["a"].data<float>().ToArray());
            foreach (var t in all.Values) t.Dispose();
            var one = Numpy.LoadNpz(p, new[] { "b" });
            Assert.Single(one);
            one["b"].Dispose();
            var e = Assert.Throws<KeyNotFoundException>(() => Numpy.LoadNpz(p, new[] { "feats" }));
            Assert.Contains("'feats'", e.Message);
            Assert.Contains(p, e.Message);
        }
    }

    public static IEnumerable<object[]> BadArrays() => new[]
    {
        new object[] { "truncated data", Npy("<f4", new long[] { 4 }, Floats(1, 2, 3)), "truncated" },
        new object[] { "extra data", Npy("<f4", new long[] { 1 }, Floats(1, 2)), "needs 4 data bytes" },
        new object[] { "bad magic", Encoding.ASCII.GetBytes("NOTNUMPY0123456789"), "bad magic" },
        new object[] { "short", new byte[] { 0x93, (byte)'N' }, "too short" },
        new object[] { "object dtype", Npy("|O", new long[] { 1 }, new byte[8]), "object arrays are refused" },
        new object[] { "unknown dtype", Npy("<c16", new long[] { 1 }, new byte[16]), "unsupported dtype" },
        new object[] { "overflow", Npy("<f8", new long[] { 4611686018427387904, 4 }, new byte[8]), "overflows" },
        new object[] { "over bound", Npy("<f8", new long[] { 1L << 40 }, new byte[8]), "bound" },
        new object[] { "missing key", Npy("<f4", new long[] { 1 }, Floats(1), rawHeader: "{'descr': '<f4', 'shape': (1,), }"), "fortran_order" },
        new object[] { "shape not tuple", Npy("<f4", new long[] { 1 }, Floats(1), rawHeader: "{'descr': '<f4', 'fortran_order': False, 'shape': 'x', }"), "'shape'" },
        new object[] { "negative dim", Npy("<f4", new long[] { 1 }, Floats(1), rawHeader: "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), "dimension" },
        new object[] { "garbage header", Npy("<f4", new long[] { 1 }, Floats(1), rawHeader: "__import__('os')"), "malformed .npy header" },
        new object[] { "bad bool", Npy("|b1", new long[] { 2 }, new byte[] { 1, 7 }), "boolean" },
        new object[] { "version", Npy("<f4", new long[] { 1 }, Floats(1), major: 9), "version" },
    };

    [Theory]
    [MemberData(nameof(BadArrays))]
    public void MalformedArraysAreNamed(string what, byte[] bytes, string expected)
    {
        var p = Temp(bytes, ".npy");
        var e = Assert.Throws<InvalidDataException>(() => Numpy.LoadNpy(p));
        Assert.Contains(expected, e.Message);
        Assert.Contains(p, e.Message);
        _ = what;
        var z = Npz(CompressionLevel.Optimal, ("x.npy", bytes));
        e = Assert.Throws<InvalidDataException>(() => Numpy.LoadNpz(z));
        Assert.Contains("x.npy", e.Message);
    }

    [Fact]
    public void BadArchivesAreNamed()
    {
        var notZip = Temp(Encoding.ASCII.GetBytes("definitely not a zip archive"), ".npz");
        Assert.Contains(notZip, Assert.Throws<InvalidDataException>(() => Numpy.LoadNpz(notZip)).Message);
        var good = Npz(CompressionLevel.Optimal, ("a.npy", Npy("<f4", new long[] { 256 }, Floats(new float[256]))));
        var bytes = File.ReadAllBytes(good);
        var cut = Temp(bytes[..(bytes.Length / 2)], ".npz");
        Assert.Contains(cut, Assert.Throws<InvalidDataException>(() => Numpy.LoadNpz(cut)).Message);
        Assert.Throws<FileNotFoundException>(() => Numpy.LoadNpz(Path.Combine(Path.GetTempPath(), "no-such.npz")));
    }
}
