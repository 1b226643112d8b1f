using System.Buffers.Binary;
using System.Text;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.IO;

public class SafeTensorsTests
{
    private static string TempFile(string name) => Path.Combine(Directory.CreateTempSubdirectory("mdtdist-st-").FullName, name);

    private static void WriteRaw(string path, string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var len = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)h.Length);
        File.WriteAllBytes(path, len.Concat(h).Concat(data).ToArray());
    }

    [Fact]
    public void RoundTripsEveryDtypeAndMetadata()
    {
        var path = TempFile("a.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["w.f64"] = torch.randn(3, 4, dtype: ScalarType.Float64),
            ["w.f32"] = torch.randn(2, dtype: ScalarType.Float32),
            ["w.f16"] = torch.randn(5, dtype: ScalarType.Float16),
            ["w.bf16"] = torch.randn(5, dtype: ScalarType.BFloat16),
            ["i.i64"] = torch.arange(6, dtype: ScalarType.Int64).reshape(2, 3),
            ["u.u8"] = torch.tensor(new byte[] { 1, 2, 255 }),
            ["scalar"] = torch.tensor(3.5, dtype: ScalarType.Float64),
        };
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(File.ReadAllBytes(path).AsSpan(0, 8)) % 8);
        var (infos, meta, _) = SafeTensors.ReadHeader(path);
        Assert.Equal("pt", meta["format"]);
        Assert.Equal(tensors.Count, infos.Count);
        var back = SafeTensors.Load(path);
        foreach (var (k, v) in tensors)
        {
            Assert.Equal(v.dtype, back[k].dtype);
            Assert.Equal(v.shape, back[k].shape);
            Assert.True(v.to(ScalarType.Float64).eq(back[k].to(ScalarType.Float64)).all().item<bool>(), k);
        }
        var f32 = SafeTensors.Load(path, ScalarType.Float32, null);
        Assert.Equal(ScalarType.Float32, f32["w.f16"].dtype);
        Assert.Equal(ScalarType.Int64, f32["i.i64"].dtype);
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "unknown dtype")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "needs 16 bytes")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[4,12]}}", 12, "overlapping")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, "truncated")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,0]}}", 8, "invalid data_offsets")]
    [InlineData("{\"a\": [1, 2", 8, "not valid JSON")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1]}}", 8, "lacks")]
    public void RejectsCorruptFilesWithAClearMessage(string header, int dataBytes, string expected)
    {
        var path = TempFile("bad.safetensors");
        WriteRaw(path, header, new byte[dataBytes]);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path));
        Assert.Contains(expected, e.Message);
        Assert.Contains("bad.safetensors", e.Message);
    }

    [Fact]
    public void RejectsHugeOrTruncatedHeaders()
    {
        var path = TempFile("h.safetensors");
        var len = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(len, 1UL << 40);
        File.WriteAllBytes(path, len);
        Assert.Contains("exceeds the limit", Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path)).Message);
        BinaryPrimitives.WriteUInt64LittleEndian(len, 1000);
        File.WriteAllBytes(path, len);
        Assert.Contains("exceeds the file size", Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path)).Message);
        File.WriteAllBytes(path, new byte[3]);
        Assert.Contains("too short", Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path)).Message);
        Assert.Throws<FileNotFoundException>(() => SafeTensors.Load(path + ".missing"));
    }

    [Fact]
    public void SaveReplacesAtomicallyAndLeavesNoTempFiles()
    {
        var path = TempFile("c.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = torch.ones(2) });
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = torch.zeros(3) });
        Assert.Equal(new long[] { 3 }, SafeTensors.Load(path)["x"].shape);
        Assert.Single(Directory.GetFiles(Path.GetDirectoryName(path)!));
    }
}
