using System.Buffers.Binary;
using System.Text;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.IO;

/// <summary>Hostile safetensors headers: each must be rejected with an <see cref="InvalidDataException"/> naming the file and the key.</summary>
public class SafeTensorsHostileTests
{
    private static string TempFile(string name) => Path.Combine(Directory.CreateTempSubdirectory("mdtdist-sth-").FullName, name);

    private static string WriteRaw(string name, byte[] header, int dataBytes)
    {
        var path = TempFile(name);
        var len = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        File.WriteAllBytes(path, len.Concat(header).Concat(new byte[dataBytes]).ToArray());
        return path;
    }

    private const string A = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";

    [Theory]
    // duplicate names: System.Text.Json keeps both, the old reader silently dropped one
    [InlineData("{" + A + "," + A + "}", 8, "'a' appears twice")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "field 'dtype' twice")]
    [InlineData("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}," + A + "}", 8, "key 'k' appears twice")]
    [InlineData("{\"__metadata__\":{},\"__metadata__\":{}," + A + "}", 8, "'__metadata__' appears twice")]
    // wrong JSON types
    [InlineData("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a': dtype is a JSON number")]
    [InlineData("{\"a\":{\"dtype\":null,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a': dtype is a JSON null")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, "tensor 'a': shape is a JSON string")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":null,\"data_offsets\":[0,8]}}", 8, "tensor 'a': shape is a JSON null")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "tensor 'a': shape[0] is \"2\"")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "tensor 'a': shape[0] is 2.5")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "tensor 'a': shape[0] is -2")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"b\":0}}}", 8, "tensor 'a': data_offsets is a JSON object")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 8, "data_offsets has 3 entries")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, "data_offsets[1] is 18446744073709551615")]
    [InlineData("{\"a\":null}", 0, "tensor 'a' is a JSON null")]
    [InlineData("{\"a\":[1,2]}", 0, "tensor 'a' is a JSON array")]
    [InlineData("{\"__metadata__\":[]}", 0, "__metadata__ is a JSON array")]
    [InlineData("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value 'k' is a JSON number")]
    [InlineData("[1]", 0, "header is a JSON array")]
    // sizes
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", 8, "more bytes than fit in 64 bits")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,8]}}", 8, "shape has 65 entries")]
    public void RejectsHostileHeadersNamingFileAndKey(string header, int dataBytes, string expected)
    {
        var path = WriteRaw("hostile.safetensors", Encoding.UTF8.GetBytes(header), dataBytes);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path));
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void RejectsInvalidUtf8InATensorName()
    {
        // "a\xFF" as a name: the format requires UTF-8; the old reader replaced the byte by U+FFFD and loaded it.
        var header = Encoding.UTF8.GetBytes("{\"a").Concat(new byte[] { 0xFF }).Concat(Encoding.UTF8.GetBytes("\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}")).ToArray();
        var path = WriteRaw("utf8.safetensors", header, 8);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.ReadHeader(path));
        Assert.Contains("not valid UTF-8 (byte 3 of the header)", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void ChunkedReadingGivesTheSameTensors()
    {
        // Tensors larger than a chunk are read piecewise into the tensor's storage (no whole-tensor managed buffer, so
        // tensors over 2 GiB load); with 64-byte chunks every path (partial last chunk, 1- to 8-byte elements) runs.
        var path = TempFile("big.safetensors");
        var g = new Generator(3);
        var tensors = new Dictionary<string, Tensor>
        {
            ["f64"] = torch.randn(new long[] { 7, 5 }, dtype: ScalarType.Float64, generator: g),
            ["f16"] = torch.randn(new long[] { 101 }, generator: g).to(ScalarType.Float16),
            ["u8"] = torch.randint(0, 255, new long[] { 3, 67 }, dtype: ScalarType.Byte, generator: g),
        };
        SafeTensors.Save(path, tensors);
        var reference = SafeTensors.Load(path);
        var before = SafeTensors.ChunkBytes;
        Dictionary<string, Tensor> chunked;
        try
        {
            SafeTensors.ChunkBytes = 64;
            chunked = SafeTensors.Load(path);
        }
        finally { SafeTensors.ChunkBytes = before; }
        foreach (var (k, v) in tensors)
        {
            Assert.True(v.eq(chunked[k]).all().item<bool>(), k);
            Assert.True(reference[k].eq(chunked[k]).all().item<bool>(), k);
        }
    }

    [Fact]
    public void AllocationBoundIsCheckedBeforeAllocatingAndCanBeScoped()
    {
        var path = TempFile("bound.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["w"] = torch.zeros(new long[] { 64 }, dtype: ScalarType.Float64) });
        using (ReadLimits.Scope(100))
        {
            var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Load(path));
            Assert.Contains("512 bytes", e.Message);
            Assert.Contains("ReadLimits.MaxAllocationBytes", e.Message);
            Assert.Contains(path, e.Message);
        }
        Assert.Equal(ReadLimits.DefaultMaxAllocationBytes, ReadLimits.MaxAllocationBytes);
        Assert.Equal(new long[] { 64 }, SafeTensors.Load(path)["w"].shape);
    }
}
