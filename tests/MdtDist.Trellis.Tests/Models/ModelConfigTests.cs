using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Tests.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>
/// The one route from a TRELLIS config to a network: every TRELLIS class loads and saves in TRELLIS's layout, and a
/// hostile config is rejected before anything is allocated, with a message naming the file and every bad key.
/// </summary>
public class ModelConfigTests
{
    /// <summary>One small config per TRELLIS class (TRELLIS's keyword names).</summary>
    public static readonly Dictionary<string, string> Configs = new()
    {
        ["SparseStructureFlowModel"] = TinyPipeline.Configs["ss_flow"],
        ["SparseStructureDecoder"] = TinyPipeline.Configs["ss_dec"],
        ["SparseStructureEncoder"] = """{"name": "SparseStructureEncoder", "args": {"in_channels": 1, "latent_channels": 4, "num_res_blocks": 1, "channels": [8, 16], "num_res_blocks_middle": 1, "norm_type": "layer"}}""",
        ["SLatFlowModel"] = TinyPipeline.Configs["slat_flow"],
        ["ElasticSLatFlowModel"] = TinyPipeline.Configs["slat_flow"].Replace("\"SLatFlowModel\"", "\"ElasticSLatFlowModel\""),
        ["SLatEncoder"] = """{"name": "SLatEncoder", "args": {"resolution": 16, "in_channels": 12, "model_channels": 32, "latent_channels": 8, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "use_fp16": true, "qk_rms_norm": false}}""",
        ["SLatGaussianDecoder"] = TinyPipeline.Configs["slat_dec_gs"],
        ["SLatMeshDecoder"] = """{"name": "SLatMeshDecoder", "args": {"resolution": 8, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 1, "attn_mode": "swin", "window_size": 4, "representation_config": {"use_color": true}}}""",
        // TRELLIS's VAE training configs name the Elastic classes.
        ["ElasticSLatEncoder"] = """{"name": "ElasticSLatEncoder", "args": {"resolution": 16, "in_channels": 12, "model_channels": 32, "latent_channels": 8, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "use_fp16": true, "qk_rms_norm": false}}""",
        ["ElasticSLatGaussianDecoder"] = TinyPipeline.Configs["slat_dec_gs"].Replace("\"SLatGaussianDecoder\"", "\"ElasticSLatGaussianDecoder\""),
        ["ElasticSLatMeshDecoder"] = """{"name": "ElasticSLatMeshDecoder", "args": {"resolution": 8, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 1, "attn_mode": "swin", "window_size": 4, "representation_config": {"use_color": true}}}""",
    };

    public static TheoryData<string> Classes => new(Configs.Keys);

    private static TrellisModelConfig Config(string json)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        return new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject());
    }

    private static string TempDir() => Directory.CreateTempSubdirectory("mdtdist-config-").FullName;

    [Fact]
    public void EveryTrellisClassIsRegistered() =>
        Assert.Equal(Configs.Keys.OrderBy(k => k, StringComparer.Ordinal), TrellisCheckpoint.RegisteredClasses.Where(Configs.ContainsKey));

    /// <summary>Save then load gives the same class, the same args and bit-identical weights (stored as float64).</summary>
    [Theory]
    [MemberData(nameof(Classes))]
    public void EveryNetworkSavesAndLoadsInTrellisLayout(string className)
    {
        var dir = TempDir();
        try
        {
            var config = Config(Configs[className]);
            using var model = TinyPipeline.Randomize(TrellisCheckpoint.Build(config, ScalarType.Float64), 11);
            var stem = Path.Combine(dir, "net");
            TrellisCheckpoint.Save(model, stem);
            var written = TrellisCheckpoint.ReadConfig(stem);
            Assert.Equal(className, written.Name);
            // Every argument of the source config is written back with the same value (defaults are added).
            foreach (var (key, value) in config.Args)
                Assert.True(JsonNode.DeepEquals(value, written.Args[key]), $"{key}: {value?.ToJsonString()} became {written.Args[key]?.ToJsonString()}");

            using var back = TrellisCheckpoint.Load(stem, ScalarType.Float64);
            Assert.Equal(model.GetType(), back.GetType());
            var a = model.state_dict();
            var b = back.state_dict();
            Assert.Equal(a.Keys.OrderBy(k => k, StringComparer.Ordinal), b.Keys.OrderBy(k => k, StringComparer.Ordinal));
            foreach (var (name, t) in a) Assert.True(t.shape.SequenceEqual(b[name].shape) && t.equal(b[name]).all().item<bool>(), name);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// The precision API is one interface: a call through <see cref="ITrellisModel"/> converts the whole torso. With the
    /// old <c>new</c>-hidden <c>ConvertTorso</c>, a call through the base type skipped the mesh decoder's subdivision blocks.
    /// </summary>
    [Theory]
    [MemberData(nameof(Classes))]
    public void SetTorsoDTypeThroughTheInterfaceConvertsTheWholeTorso(string className)
    {
        using var model = TrellisCheckpoint.Build(Config(Configs[className]), ScalarType.Float32, torch.META);
        var tm = Assert.IsAssignableFrom<ITrellisModel>(model);
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.dtype);
        tm.SetTorsoDType(ScalarType.Float16);
        Assert.Equal(ScalarType.Float16, tm.TorsoDType);
        Assert.Equal(ScalarType.Float32, tm.DType);
        var after = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.dtype);
        var converted = after.Where(kv => kv.Value == ScalarType.Float16).Select(kv => kv.Key).ToList();
        Assert.NotEmpty(converted);
        Assert.All(before, kv => Assert.Equal(ScalarType.Float32, kv.Value));
        if (model is SLatMeshDecoder)
        {
            // Both subdivision blocks' convolutions (not their group norms) run in the torso dtype.
            Assert.Contains("upsample.0.out_layers.0.conv.weight", converted);
            Assert.Contains("upsample.1.out_layers.3.conv.weight", converted);
            Assert.DoesNotContain("upsample.0.act_layers.0.weight", converted);
        }
    }

    public static TheoryData<string, string, string> BadArgs => new()
    {
        // wrong JSON types
        { "SLatFlowModel", "\"model_channels\": \"32\"", "argument 'model_channels' = \"32\" is not an integer" },
        { "SLatFlowModel", "\"io_block_channels\": {\"a\": 1}", "argument 'io_block_channels' = {\"a\":1} is not a list of integers" },
        { "SLatFlowModel", "\"model_channels\": null", "required argument 'model_channels' is null" },
        { "SLatFlowModel", "\"mlp_ratio\": [2]", "argument 'mlp_ratio' = [2] is not a finite number" },
        { "SLatGaussianDecoder", "\"representation_config\": [1]", "argument 'representation_config' = [1] is not an object" },
        { "SLatGaussianDecoder", "\"representation_config\": null", "required argument 'representation_config' is null" },
        { "SLatMeshDecoder", "\"representation_config\": 3", "argument 'representation_config' = 3 is not an object" },
        { "SparseStructureDecoder", "\"channels\": 16", "argument 'channels' = 16 is not a list of integers" },
        { "SparseStructureFlowModel", "\"qk_rms_norm\": \"yes\"", "argument 'qk_rms_norm' = \"yes\" is not a boolean" },
        { "SLatEncoder", "\"attn_mode\": 1", "argument 'attn_mode' = 1 is not a string" },
        // absurd or degenerate sizes
        { "SLatFlowModel", "\"model_channels\": 2147483648", "model_channels must be in [1, 1048576], got 2147483648" },
        { "SLatFlowModel", "\"model_channels\": 1e300", "argument 'model_channels' = 1e300 is not an integer" },
        { "SLatFlowModel", "\"num_blocks\": 65536", "num_blocks must be in [0, 1024], got 65536" },
        { "SparseStructureFlowModel", "\"num_blocks\": 2147483647", "num_blocks must be in [0, 1024], got 2147483647" },
        { "SparseStructureFlowModel", "\"mlp_ratio\": 0", "mlp_ratio must be in (0, 64], got 0" },
        { "SLatEncoder", "\"mlp_ratio\": -1", "mlp_ratio must be in (0, 64], got -1" },
        { "SLatFlowModel", "\"num_heads\": null, \"num_head_channels\": 0", "num_head_channels must be in [1, 32], got 0" },
        { "SparseStructureFlowModel", "\"num_heads\": 3", "model_channels 32 must be a multiple of the number of heads 3" },
        { "SparseStructureFlowModel", "\"resolution\": -4", "resolution must be in [1, 4096], got -4" },
        { "SparseStructureDecoder", "\"channels\": [16, 0, 8]", "channels must all be in [1, 1048576]" },
        { "SLatGaussianDecoder", "\"num_gaussians\": 4,", "'representation_config.num_gaussians': 100000 is not in [1, 65536]" },
        { "SLatEncoder", "\"window_size\": 0", "window_size must be in [1, 4096], got 0" },
    };

    private static string Edit(string className, string change)
    {
        var json = Configs[className];
        var key = change[..(change.IndexOf(':') + 1)];
        if (key == "\"num_gaussians\":") return json.Replace("\"num_gaussians\": 4", "\"num_gaussians\": 100000");
        // Replace the key's value when the key is there, otherwise add it as the first argument.
        int at = json.IndexOf(key, StringComparison.Ordinal);
        if (at < 0) return json.Replace("\"args\": {", "\"args\": {" + change + ", ");
        int end = at + key.Length;
        int depth = 0;
        while (end < json.Length && !(depth == 0 && (json[end] == ',' || json[end] == '}')))
        {
            if (json[end] is '[' or '{') depth++;
            if (json[end] is ']' or '}') depth--;
            end++;
        }
        return json[..at] + change + json[end..];
    }

    /// <summary>Through <see cref="TrellisCheckpoint.Build(TrellisModelConfig, ScalarType, Device?, long)"/>: one ArgumentException naming the key.</summary>
    [Theory]
    [MemberData(nameof(BadArgs))]
    public void BadArgumentsAreRejectedByKey(string className, string change, string message)
    {
        var json = Edit(className, change);
        var e = Record.Exception(() => TrellisCheckpoint.Build(Config(json), ScalarType.Float32, torch.META).Dispose());
        var ae = Assert.IsType<ArgumentException>(e);
        Assert.Contains(message, ae.Message);
        Assert.Contains(className, ae.Message);
    }

    /// <summary>Through a checkpoint file: an InvalidDataException naming the config file and the key, before any weight is read.</summary>
    [Theory]
    [MemberData(nameof(BadArgs))]
    public void BadArgumentsInAFileNameTheFileAndTheKey(string className, string change, string message)
    {
        var dir = TempDir();
        try
        {
            var stem = Path.Combine(dir, "net");
            using (var model = TrellisCheckpoint.Build(Config(Configs[className])))
                TrellisCheckpoint.Save(model, stem, ScalarType.Float16);
            File.WriteAllText(stem + ".json", Edit(className, change));
            var e = Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem).Dispose());
            Assert.Contains(stem + ".json", e.Message);
            Assert.Contains(message, e.Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void EveryProblemIsListedAtOnce()
    {
        var json = Edit("SLatFlowModel", "\"model_channels\": \"wide\"").Replace("\"num_blocks\": 1", "\"num_blocks\": 1, \"bogus\": 2, \"share_mod\": 3");
        var e = Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build(Config(json)));
        Assert.Contains("'model_channels'", e.Message);
        Assert.Contains("'share_mod'", e.Message);
        Assert.Contains("unknown argument(s) 'bogus'", e.Message);
    }

    [Fact]
    public void MalformedConfigFilesNameTheFile()
    {
        var dir = TempDir();
        try
        {
            var stem = Path.Combine(dir, "net");
            using (var model = TrellisCheckpoint.Build(Config(Configs["SLatFlowModel"])))
                TrellisCheckpoint.Save(model, stem, ScalarType.Float16);
            foreach (var (text, message) in new[]
            {
                ("[1, 2]", "is not a JSON object"),
                ("{\"name\": 7, \"args\": {}}", "has no string \"name\""),
                ("{\"name\": null}", "has no string \"name\""),
                ("{\"name\": \"SLatFlowModel\", \"args\": [1]}", "\"args\" is not an object"),
                ("{\"name\": \"SLatFlowModel\", \"args\": \"x\"}", "\"args\" is not an object"),
                ("{\"name\": \"SLatFlowModel\", \"args\": {", "is not valid JSON"),
            })
            {
                File.WriteAllText(stem + ".json", text);
                var e = Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem).Dispose());
                Assert.Contains(stem + ".json", e.Message);
                Assert.Contains(message, e.Message);
            }
            File.WriteAllText(stem + ".json", "{\"name\": \"NoSuchModel\", \"args\": {}}");
            var ns = Assert.Throws<NotSupportedException>(() => TrellisCheckpoint.Load(stem).Dispose());
            Assert.Contains(stem + ".json", ns.Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// The element bound: the tiny SLat flow holds a known number of elements (counted on the meta device); a bound one
    /// below it rejects the config, the exact count passes, and a checkpoint file is held to the same bound.
    /// </summary>
    [Fact]
    public void TheElementBoundIsCheckedBeforeAllocationAndCanBeRaised()
    {
        var config = Config(Configs["SLatFlowModel"]);
        long count;
        using (var shape = TrellisCheckpoint.Build(config, ScalarType.Float32, torch.META))
            count = shape.state_dict().Values.Sum(t => t.numel());
        Assert.True(count > 1000);
        var e = Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build(config, maxElements: count - 1));
        Assert.Contains("pass a larger maxElements", e.Message);
        Assert.Contains(count.ToString("N0", System.Globalization.CultureInfo.InvariantCulture), e.Message);
        TrellisCheckpoint.Build(config, maxElements: count).Dispose();

        // A huge but well-formed config is refused by the default bound without allocating (12·C² per block at C = 2^20).
        var huge = Config(Configs["SLatFlowModel"].Replace("\"model_channels\": 32", "\"model_channels\": 1048576"));
        Assert.Contains("more than the bound of 4,000,000,000", Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build(huge)).Message);

        var dir = TempDir();
        try
        {
            var stem = Path.Combine(dir, "net");
            using (var model = TrellisCheckpoint.Build(config)) TrellisCheckpoint.Save(model, stem);
            var le = Assert.Throws<InvalidDataException>(() => TrellisCheckpoint.Load(stem, maxElements: count - 1));
            Assert.Contains(stem + ".json", le.Message);
            Assert.Contains("pass a larger maxElements", le.Message);
            TrellisCheckpoint.Load(stem, maxElements: count).Dispose();
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>A config whose network does not fit the weight file's header is rejected on the meta device, naming the weights file.</summary>
    [Fact]
    public void ConfigsAreCheckedAgainstTheWeightShapesBeforeBuilding()
    {
        var dir = TempDir();
        try
        {
            var stem = Path.Combine(dir, "net");
            using (var model = TrellisCheckpoint.Build(Config(Configs["SLatFlowModel"]))) TrellisCheckpoint.Save(model, stem, ScalarType.Float16);
            var args = JsonNode.Parse(File.ReadAllText(stem + ".json"))!;
            args["args"]!["num_blocks"] = 3;
            args["args"]!["model_channels"] = 64;
            File.WriteAllText(stem + ".json", args.ToJsonString());
            var e = Assert.Throws<StateDictMismatchException>(() => TrellisCheckpoint.Load(stem));
            Assert.Contains(stem + ".safetensors", e.Message);
            Assert.Contains("blocks.2.", e.Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
