using System.IO.Compression;
using System.Text;
using MdtDist.Trellis.Checkpoints;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>
/// Zip-container torch.save files written here opcode by opcode (pickle protocol 2, the layout PyTorch writes), to
/// cover what the PyTorch-written fixtures do not: tensors that view part of a shared storage with an offset and a
/// stride, and a tensor reaching past its storage.
/// </summary>
public class HandMadeTorchFileTests
{
    private sealed record Entry(string Name, long Offset, long[] Size, long[] Stride);

    private static byte[] Pickle(IEnumerable<Entry> entries, long storageElements)
    {
        var b = new List<byte> { 0x80, 2, (byte)'}', (byte)'(' };
        void Str(string s) { var u = Encoding.UTF8.GetBytes(s); b.Add((byte)'X'); b.AddRange(BitConverter.GetBytes(u.Length)); b.AddRange(u); }
        void Int(long v) { b.Add((byte)'J'); b.AddRange(BitConverter.GetBytes((int)v)); }
        void Global(string module, string name) { b.Add((byte)'c'); b.AddRange(Encoding.ASCII.GetBytes(module + "\n" + name + "\n")); }
        void Tuple(IEnumerable<long> values) { b.Add((byte)'('); foreach (var v in values) Int(v); b.Add((byte)'t'); }
        foreach (var e in entries)
        {
            Str(e.Name);
            Global("torch._utils", "_rebuild_tensor_v2");
            b.Add((byte)'(');
            b.Add((byte)'('); Str("storage"); Global("torch", "FloatStorage"); Str("0"); Str("cpu"); Int(storageElements); b.Add((byte)'N'); b.Add((byte)'t');
            b.Add((byte)'Q');                       // BINPERSID
            Int(e.Offset);
            Tuple(e.Size);
            Tuple(e.Stride);
            b.Add(0x89);                            // NEWFALSE (requires_grad)
            Global("collections", "OrderedDict"); b.Add((byte)')'); b.Add((byte)'R');
            b.Add((byte)'t');
            b.Add((byte)'R');
        }
        b.Add((byte)'u');
        b.Add((byte)'.');
        return b.ToArray();
    }

    private static string Write(string dir, string name, IEnumerable<Entry> entries, float[] storage)
    {
        var path = Path.Combine(dir, name);
        using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
        using (var s = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) s.Write(Pickle(entries, storage.Length));
        using (var s = zip.CreateEntry("archive/data/0", CompressionLevel.NoCompression).Open())
            foreach (var f in storage) s.Write(BitConverter.GetBytes(f));
        return path;
    }

    [Fact]
    public void ViewsOfASharedStorageAreRebuiltWithOffsetAndStride()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-pt-");
        try
        {
            var storage = new float[] { 0, 1, 2, 3, 4, 5 };
            var path = Write(dir.FullName, "shared.pt", new[]
            {
                new Entry("whole", 0, new long[] { 2, 3 }, new long[] { 3, 1 }),
                new Entry("head", 0, new long[] { 2, 2 }, new long[] { 2, 1 }),
                new Entry("strided", 1, new long[] { 3 }, new long[] { 2 }),
                new Entry("transposed", 0, new long[] { 3, 2 }, new long[] { 1, 3 }),
            }, storage);
            Assert.Equal(PyTorchFileFormat.Zip, PyTorchCheckpoint.DetectFormat(path));
            var sd = PyTorchCheckpoint.LoadStateDict(path);
            try
            {
                Assert.Equal(new float[] { 0, 1, 2, 3, 4, 5 }, sd["whole"].data<float>().ToArray());
                Assert.Equal(new float[] { 0, 1, 2, 3 }, sd["head"].data<float>().ToArray());
                Assert.Equal(new float[] { 1, 3, 5 }, sd["strided"].data<float>().ToArray());
                Assert.Equal(new long[] { 3, 2 }, sd["transposed"].shape);
                Assert.Equal(new float[] { 0, 3, 1, 4, 2, 5 }, sd["transposed"].contiguous().data<float>().ToArray());
            }
            finally
            {
                foreach (var t in sd.Values) t.Dispose();
            }

            var bad = Write(dir.FullName, "bad.pt", new[] { new Entry("too_far", 4, new long[] { 3 }, new long[] { 1 }) }, storage);
            var e = Assert.Throws<InvalidDataException>(() => PyTorchCheckpoint.LoadStateDict(bad));
            Assert.Contains("too_far", e.Message);
            Assert.Contains(bad, e.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
