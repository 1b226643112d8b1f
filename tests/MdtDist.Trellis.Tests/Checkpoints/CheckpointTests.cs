using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using MdtDist.Trellis.Tests.Models;

namespace MdtDist.Trellis.Tests.Checkpoints;

public sealed class CheckpointTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mdtdist-ckpt");

    public void Dispose() => _dir.Delete(true);

    private string Stem(string name) => Path.Combine(_dir.FullName, "ckpts", name);

    [Fact]
    public void FlowModelRoundTripsThroughTheTrellisLayout()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 11, patch: 2, shareMod: true, qkRmsCross: true);
        var stem = Stem("ss_flow_tiny");
        TrellisCheckpoint.Save(model, stem);

        Assert.True(File.Exists(stem + ".json") && File.Exists(stem + ".safetensors"));
        var json = JsonNode.Parse(File.ReadAllText(stem + ".json"))!;
        Assert.Equal("SparseStructureFlowModel", json["name"]!.GetValue<string>());
        Assert.Equal(2, json["args"]!["patch_size"]!.GetValue<long>());
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(stem)!, "*.tmp"));
        // The file holds exactly the state dict, pos_emb included.
        var names = SafeTensors.ReadHeader(stem + ".safetensors").Tensors.Select(t => t.Name).ToHashSet();
        Assert.Equal(model.state_dict().Keys.ToHashSet(), names);
        Assert.Contains("pos_emb", names);
        Assert.Contains("adaLN_modulation.1.weight", names);
        Assert.Contains("blocks.1.cross_attn.k_rms_norm.gamma", names);

        using var loaded = TrellisCheckpoint.Load<SparseStructureFlowModel>(stem, ScalarType.Float64);
        Assert.Equal(model.Config, loaded.Config);
        var a = model.state_dict();
        foreach (var (name, t) in loaded.state_dict()) Assert.Equal(0.0, TinyModels.MaxAbsDiff(a[name], t));

        var rng = new Generator(45);
        var x = torch.randn(new long[] { 2, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: rng);
        var t1 = torch.tensor(new[] { 300.0, 900.0 }, dtype: ScalarType.Float64);
        var cond = torch.randn(new long[] { 2, 5, 10 }, dtype: ScalarType.Float64, generator: rng);
        using var noGrad = torch.no_grad();
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(model.forward(x, t1, cond), loaded.forward(x, t1, cond)));
    }

    [Fact]
    public void Float16FileLoadsIntoAnyDtype()
    {
        using var scope = torch.NewDisposeScope();
        using var dec = TinyModels.Decoder(seed: 5);
        var stem = Stem("ss_dec_tiny_fp16");
        TrellisCheckpoint.Save(dec, stem, storeDType: ScalarType.Float16);
        Assert.All(SafeTensors.ReadHeader(stem + ".safetensors").Tensors, t => Assert.Equal("F16", t.DType));

        using var f32 = TrellisCheckpoint.Load<SparseStructureDecoder>(stem);          // default float32
        using var f64 = TrellisCheckpoint.Load<SparseStructureDecoder>(stem + ".json", ScalarType.Float64);
        Assert.Equal(ScalarType.Float32, f32.DType);
        Assert.Equal(ScalarType.Float64, f64.DType);
        var reference = dec.state_dict();
        foreach (var (name, t) in f64.state_dict())
        {
            var expected = reference[name].to(ScalarType.Float16).to(ScalarType.Float64);
            Assert.Equal(0.0, TinyModels.MaxAbsDiff(expected, t));
            Assert.Equal(0.0, TinyModels.MaxAbsDiff(expected, f32.state_dict()[name]));
        }
    }

    [Fact]
    public void EncoderRoundTrips()
    {
        using var scope = torch.NewDisposeScope();
        using var enc = TinyModels.Encoder(seed: 6);
        var stem = Stem("ss_enc_tiny");
        TrellisCheckpoint.Save(enc, stem + ".safetensors");
        using var loaded = (SparseStructureEncoder)TrellisCheckpoint.Load(stem, ScalarType.Float64);
        var x = (torch.rand(new long[] { 1, 1, 8, 8, 8 }, dtype: ScalarType.Float64, generator: new Generator(82)) > 0.5).to(ScalarType.Float64);
        using var noGrad = torch.no_grad();
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(enc.forward(x), loaded.forward(x)));
    }

    [Fact]
    public void StrictLoadListsMissingUnexpectedAndMisshapedTogether()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 3);
        var sd = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        sd.Remove("blocks.0.self_attn.to_qkv.bias");
        sd.Remove("out_layer.weight");
        sd["blocks.0.extra.weight"] = torch.zeros(3, dtype: ScalarType.Float64);
        sd["blocks.1.mlp.mlp.0.weight"] = torch.zeros(7, 24, dtype: ScalarType.Float64);
        sd["pos_emb"] = torch.zeros(10, 24, dtype: ScalarType.Float64);
        var before = model.state_dict()["input_layer.weight"].clone();
        sd["input_layer.weight"] = torch.ones_like(before);

        var e = Assert.Throws<StateDictMismatchException>(() => TrellisCheckpoint.LoadStateDict(model, sd));
        Assert.Equal(new[] { "blocks.0.self_attn.to_qkv.bias", "out_layer.weight" }, e.Missing);
        Assert.Equal(new[] { "blocks.0.extra.weight" }, e.Unexpected);
        Assert.Equal(new[] { "blocks.1.mlp.mlp.0.weight", "pos_emb" }, e.Mismatched.Select(m => m.Name));
        Assert.Equal(new long[] { 60, 24 }, e.Mismatched[0].Expected);
        Assert.Equal(new long[] { 7, 24 }, e.Mismatched[0].Found);
        foreach (var s in new[] { "blocks.0.self_attn.to_qkv.bias", "out_layer.weight", "blocks.0.extra.weight", "[60, 24]", "[7, 24]", "[64, 24]", "[10, 24]" })
            Assert.Contains(s, e.Message);
        // Nothing was copied.
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(before, model.state_dict()["input_layer.weight"]));
    }

    [Fact]
    public void NonStrictLoadIgnoresMissingAndUnexpectedButNotShapes()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 3);
        var sd = new Dictionary<string, Tensor>
        {
            ["input_layer.bias"] = torch.full(24, 0.5, dtype: ScalarType.Float32),
            ["something.else"] = torch.zeros(1),
        };
        TrellisCheckpoint.LoadStateDict(model, sd, strict: false);
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(model.state_dict()["input_layer.bias"], torch.full(24, 0.5, dtype: ScalarType.Float64)));
        sd["input_layer.bias"] = torch.zeros(25);
        Assert.Throws<StateDictMismatchException>(() => TrellisCheckpoint.LoadStateDict(model, sd, strict: false));
    }

    [Fact]
    public void PosEmbIsLoadedWhenPresentAndKeptWhenAbsent()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 4);
        var computed = model.state_dict()["pos_emb"].clone();
        var sd = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        sd.Remove("pos_emb");
        TrellisCheckpoint.LoadStateDict(model, sd);   // strict, yet a missing buffer is fine
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(computed, model.state_dict()["pos_emb"]));
        sd["pos_emb"] = torch.full_like(computed, 0.25);
        TrellisCheckpoint.LoadStateDict(model, sd);
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(torch.full_like(computed, 0.25), model.state_dict()["pos_emb"]));
    }

    [Fact]
    public void IntegerTensorForAFloatParameterIsReported()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 4);
        var sd = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        sd["out_layer.bias"] = torch.zeros(2, dtype: ScalarType.Int64);
        var e = Assert.Throws<StateDictMismatchException>(() => TrellisCheckpoint.LoadStateDict(model, sd));
        Assert.Contains("out_layer.bias", e.WrongDType.Single());
    }

    [Fact]
    public void MismatchedCheckpointFileIsReportedBeforeLoading()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 4);
        var stem = Stem("flow");
        TrellisCheckpoint.Save(model, stem);
        // Same weights, config claiming wider conditions: to_kv is mis-shaped in every block.
        var json = JsonNode.Parse(File.ReadAllText(stem + ".json"))!;
        json["args"]!["cond_channels"] = 12;
        File.WriteAllText(stem + ".json", json.ToJsonString());
        var e = Assert.Throws<StateDictMismatchException>(() => TrellisCheckpoint.Load(stem, ScalarType.Float64));
        Assert.Equal(new[] { "blocks.0.cross_attn.to_kv.weight", "blocks.1.cross_attn.to_kv.weight" }, e.Mismatched.Select(m => m.Name));
        Assert.Contains(stem + ".safetensors", e.Message);
    }

    [Fact]
    public void TruncatedOrCorruptWeightsGiveInvalidDataException()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Decoder(seed: 7);
        var stem = Stem("dec");
        TrellisCheckpoint.Save(model, stem);
        var bytes = File.ReadAllBytes(stem + ".safetensors");

        File.WriteAllBytes(stem + ".safetensors", bytes[..(bytes.Length - 100)]);
        var truncated = Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem, ScalarType.Float64));
        Assert.Contains("truncated", truncated.Message);

        var corrupt = (byte[])bytes.Clone();
        corrupt[8] = (byte)'#';   // first byte of the JSON header
        File.WriteAllBytes(stem + ".safetensors", corrupt);
        var e2 = Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem, ScalarType.Float64));
        Assert.Contains("JSON", e2.Message);

        File.WriteAllBytes(stem + ".safetensors", bytes[..5]);
        Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem, ScalarType.Float64));

        File.Delete(stem + ".safetensors");
        Assert.Throws<FileNotFoundException>(() => TrellisCheckpoint.Load(stem, ScalarType.Float64));
    }

    [Fact]
    public void BadConfigFilesAreReportedClearly()
    {
        var stem = Stem("bad");
        Directory.CreateDirectory(Path.GetDirectoryName(stem)!);
        File.WriteAllText(stem + ".json", "{\"name\": \"SparseStructureFlowModel\", \"args\": {");
        Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.ReadConfig(stem));
        File.WriteAllText(stem + ".json", "{\"args\": {}}");
        Assert.Contains("name", Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.ReadConfig(stem)).Message);

        var unknownClass = new TrellisModelConfig("NoSuchModel", new JsonObject());
        var nse = Assert.Throws<NotSupportedException>(() => TrellisCheckpoint.Build(unknownClass));
        Assert.Contains("SparseStructureDecoder", nse.Message);

        var args = TinyModels.FlowConfig().ToArgs();
        args.Remove("resolution");
        args["window_size"] = 8;
        args["num_blocks"] = "two";
        var ae = Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build(new TrellisModelConfig("SparseStructureFlowModel", args), ScalarType.Float64));
        Assert.Contains("'resolution'", ae.Message);
        Assert.Contains("'window_size'", ae.Message);
        Assert.Contains("'num_blocks'", ae.Message);

        var rope = TinyModels.FlowConfig().ToArgs();
        rope["pe_mode"] = "rope";
        Assert.Throws<NotSupportedException>(() => TrellisCheckpoint.Build(new TrellisModelConfig("SparseStructureFlowModel", rope), ScalarType.Float64));

        // Loaded from a file, the same refusal names the config file (found by the fuzzer on an edited checkpoint).
        var dir = Directory.CreateTempSubdirectory("mdtdist-rope-").FullName;
        try
        {
            using (var flow = TinyModels.Flow()) TrellisCheckpoint.Save(flow, Path.Combine(dir, "flow"));
            var json = Path.Combine(dir, "flow.json");
            var root = JsonNode.Parse(File.ReadAllText(json))!;
            root["args"]!["pe_mode"] = "rope";
            File.WriteAllText(json, root.ToJsonString());
            var load = Assert.Throws<NotSupportedException>(() => TrellisCheckpoint.Load(Path.Combine(dir, "flow"), ScalarType.Float64).Dispose());
            Assert.Contains(json, load.Message);
            Assert.Contains("pe_mode", load.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void RegistryAcceptsNewClasses()
    {
        TrellisCheckpoint.Register("TinyTestDecoder", (a, d, dev) =>
            new SparseStructureDecoder(TinyModels.DecoderConfig with { OutChannels = a["out"].Deserialize<long>() }, d, dev));
        Assert.Contains("TinyTestDecoder", TrellisCheckpoint.RegisteredClasses);
        using var m = (SparseStructureDecoder)TrellisCheckpoint.Build(new TrellisModelConfig("TinyTestDecoder", new JsonObject { ["out"] = 2 }), ScalarType.Float64);
        Assert.Equal(2, m.Config.OutChannels);
    }

    [Fact]
    public void SaveRejectsNonTrellisModules()
    {
        using var lin = nn.Linear(2, 2);
        Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Save(lin, Stem("lin")));
    }
}
