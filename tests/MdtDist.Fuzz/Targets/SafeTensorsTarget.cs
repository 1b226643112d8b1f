using MdtDist.Core.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Fuzz.Targets;

/// <summary><see cref="SafeTensors.Load(string)"/> on one <c>.safetensors</c> file.</summary>
public sealed class SafeTensorsTarget : FuzzTarget
{
    /// <inheritdoc />
    public override string Name => "safetensors";

    /// <inheritdoc />
    public override string EntryPoint => "SafeTensors.Load(path)";

    /// <inheritdoc />
    protected override IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-fuzz-seed-").FullName;
        try
        {
            using var scope = torch.NewDisposeScope();
            var g = new Generator(17);
            var many = new Dictionary<string, Tensor>
            {
                ["blocks.0.attn.to_qkv.weight"] = torch.randn(new long[] { 6, 4 }, generator: g),
                ["blocks.0.norm.bias"] = torch.randn(new long[] { 4 }, dtype: ScalarType.Float16, generator: g),
                ["pos_emb"] = torch.randn(new long[] { 2, 3 }, dtype: ScalarType.BFloat16, generator: g),
                ["coords"] = torch.arange(12, dtype: ScalarType.Int64).reshape(3, 4),
                ["mask"] = torch.tensor(new[] { true, false, true }),
                ["bytes"] = torch.arange(5, dtype: ScalarType.Byte),
                ["scalar"] = torch.tensor(3.5),
                ["empty"] = torch.zeros(new long[] { 0, 3 }),
            };
            var a = Path.Combine(dir, "a.safetensors");
            SafeTensors.Save(a, many, new Dictionary<string, string> { ["format"] = "pt" });
            var b = Path.Combine(dir, "b.safetensors");
            SafeTensors.Save(b, new Dictionary<string, Tensor> { ["w"] = torch.randn(new long[] { 3, 2 }, dtype: ScalarType.Float64, generator: g) });
            return new[]
            {
                new Dictionary<string, byte[]> { ["model.safetensors"] = File.ReadAllBytes(a) },
                new Dictionary<string, byte[]> { ["model.safetensors"] = File.ReadAllBytes(b) },
            };
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <inheritdoc />
    public override void Read(string folder, FuzzCase c)
    {
        var tensors = SafeTensors.Load(Path.Combine(folder, "model.safetensors"));
        foreach (var t in tensors.Values) t.Dispose();
    }
}
