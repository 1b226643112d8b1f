using System.Text.Json.Nodes;
using MdtDist.Trellis.Pipeline;
using Xunit;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>pipeline.json is validated when it is read, before any network is built, with messages naming the file and key.</summary>
public class PipelineJsonValidationTests
{
    // TRELLIS-image-large's pipeline.json (microsoft/TRELLIS-image-large on the hub), verbatim values.
    private const string ImageLarge = """
        {
          "name": "TrellisImageTo3DPipeline",
          "args": {
            "models": {
              "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
              "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16",
              "slat_decoder_gs": "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16",
              "slat_decoder_rf": "ckpts/slat_dec_rf_swin8_B_64l8r16_fp16",
              "slat_decoder_mesh": "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
              "slat_flow_model": "ckpts/slat_flow_img_dit_L_64l8p2_fp16"
            },
            "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
              "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "slat_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
              "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "slat_normalization": {
              "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133, -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
              "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695, 2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338]
            },
            "image_cond_model": "dinov2_vitl14_reg"
          }
        }
        """;

    private static string Edit(Action<JsonObject> edit)
    {
        var root = JsonNode.Parse(ImageLarge)!.AsObject();
        edit(root["args"]!.AsObject());
        return root.ToJsonString();
    }

    private static JsonObject Params(JsonObject args, string sampler = "sparse_structure_sampler") => args[sampler]!["params"]!.AsObject();

    private static string Fails(string json)
    {
        var e = Assert.Throws<InvalidDataException>(() => TrellisPipelineConfig.Parse(json, "'/models/x/pipeline.json'"));
        Assert.Contains("/models/x/pipeline.json", e.Message);
        return e.Message;
    }

    [Fact]
    public void ReadsTrellisImageLargeLiterally()
    {
        var c = TrellisPipelineConfig.Parse(ImageLarge);
        foreach (var s in new[] { c.StructureSampler, c.LatentSampler })
        {
            Assert.Equal(25, s.Steps);
            Assert.Equal(5.0, s.CfgStrength);
            Assert.Equal(0.5, s.CfgIntervalStart);
            Assert.Equal(1.0, s.CfgIntervalEnd);
            Assert.Equal(3.0, s.RescaleT);
            Assert.Equal(1e-5, s.SigmaMin);
            Assert.Equal(StageSolver.Euler, s.Solver);
        }
        Assert.Equal(-2.1687545776367188, c.Normalization.Mean[0]);
        Assert.Equal(2.684523105621338, c.Normalization.Std[7]);
        Assert.Equal("ckpts/ss_flow_img_dit_L_16l8_fp16", c.Models["sparse_structure_flow_model"]);
        Assert.Equal(6, c.Models.Count);
        Assert.Equal("dinov2_vitl14_reg", c.ImageConditionModel);
        Assert.Null(c.TextConditionModel);
    }

    [Fact]
    public void ConditionModelNamesAreStringsOrAbsent()
    {
        var text = TrellisPipelineConfig.Parse(Edit(a => { a.Remove("image_cond_model"); a["text_cond_model"] = "openai/clip-vit-large-patch14"; }));
        Assert.Null(text.ImageConditionModel);
        Assert.Equal("openai/clip-vit-large-patch14", text.TextConditionModel);
        Assert.Contains("args.image_cond_model: must be a string", Fails(Edit(a => a["image_cond_model"] = 3)));
        Assert.Contains("args.text_cond_model: must be a string", Fails(Edit(a => a["text_cond_model"] = new JsonArray())));
    }

    [Fact]
    public void ReadsEachStageWithItsOwnValues()
    {
        // TRELLIS-text-large: cfg 7.5 on [0.5, 0.95]; here stage 2 also differs so that a swapped or doubled value shows.
        var json = Edit(a =>
        {
            a["sparse_structure_sampler"]!["params"] = JsonNode.Parse("""{"steps": 12, "cfg_strength": 7.5, "cfg_interval": [0.5, 0.95], "rescale_t": 3.0}""");
            a["slat_sampler"]!["params"] = JsonNode.Parse("""{"steps": 7, "cfg_strength": 0.25, "cfg_interval": [0.125, 0.75], "rescale_t": 2.5}""");
            a["slat_sampler"]!["args"] = JsonNode.Parse("""{"sigma_min": 0.001}""");
        });
        var c = TrellisPipelineConfig.Parse(json);
        Assert.Equal((12, 7.5, 0.5, 0.95, 3.0, 1e-5), (c.StructureSampler.Steps, c.StructureSampler.CfgStrength, c.StructureSampler.CfgIntervalStart, c.StructureSampler.CfgIntervalEnd, c.StructureSampler.RescaleT, c.StructureSampler.SigmaMin));
        Assert.Equal((7, 0.25, 0.125, 0.75, 2.5, 0.001), (c.LatentSampler.Steps, c.LatentSampler.CfgStrength, c.LatentSampler.CfgIntervalStart, c.LatentSampler.CfgIntervalEnd, c.LatentSampler.RescaleT, c.LatentSampler.SigmaMin));
    }

    [Fact]
    public void MissingParamsTakeTheDefaultsOfTrellisSample()
    {
        // TRELLIS's sample(): steps=50, rescale_t=1.0, cfg_strength=3.0, cfg_interval=(0.0, 1.0).
        var json = Edit(a =>
        {
            a["sparse_structure_sampler"]!["params"] = new JsonObject();
            a["slat_sampler"] = JsonNode.Parse("""{"name": "FlowEulerCfgSampler", "args": {"sigma_min": 1e-5}, "params": {"cfg_interval": [0.5, 0.9]}}""");
        });
        var c = TrellisPipelineConfig.Parse(json);
        Assert.Equal((50, 3.0, 0.0, 1.0, 1.0), (c.StructureSampler.Steps, c.StructureSampler.CfgStrength, c.StructureSampler.CfgIntervalStart, c.StructureSampler.CfgIntervalEnd, c.StructureSampler.RescaleT));
        // The CFG sampler has no interval: guidance on every step.
        Assert.Equal((3.0, 0.0, 1.0), (c.LatentSampler.CfgStrength, c.LatentSampler.CfgIntervalStart, c.LatentSampler.CfgIntervalEnd));
        var plain = TrellisPipelineConfig.Parse(Edit(a => a["slat_sampler"]!["name"] = "FlowEulerSampler"));
        Assert.Equal(0.0, plain.LatentSampler.CfgStrength);
    }

    [Theory]
    [InlineData("steps", "-3", "sparse_structure_sampler.params.steps", "[1, 10000]")]
    [InlineData("steps", "0", "sparse_structure_sampler.params.steps", "[1, 10000]")]
    [InlineData("steps", "1e9", "sparse_structure_sampler.params.steps", "[1, 10000]")]
    [InlineData("steps", "2147483647", "sparse_structure_sampler.params.steps", "[1, 10000]")]
    [InlineData("steps", "99999999999999999999", "sparse_structure_sampler.params.steps", "must be in")]
    [InlineData("steps", "2.5", "sparse_structure_sampler.params.steps", "integer")]
    [InlineData("steps", "\"25\"", "sparse_structure_sampler.params.steps", "found a string")]
    [InlineData("cfg_strength", "-1", "sparse_structure_sampler.params.cfg_strength", ">= 0")]
    [InlineData("cfg_strength", "null", "sparse_structure_sampler.params.cfg_strength", "found null")]
    [InlineData("cfg_interval", "[0.9, 0.5]", "sparse_structure_sampler.params.cfg_interval", "reversed")]
    [InlineData("cfg_interval", "[0.5, 1.5]", "sparse_structure_sampler.params.cfg_interval[1]", "[0, 1]")]
    [InlineData("cfg_interval", "[0.5]", "sparse_structure_sampler.params.cfg_interval", "2 numbers")]
    [InlineData("cfg_interval", "[0.5, \"x\"]", "sparse_structure_sampler.params.cfg_interval[1]", "finite number")]
    [InlineData("cfg_interval", "{}", "sparse_structure_sampler.params.cfg_interval", "found an object")]
    [InlineData("rescale_t", "0", "sparse_structure_sampler.params.rescale_t", "> 0")]
    [InlineData("rescale_t", "-3", "sparse_structure_sampler.params.rescale_t", "> 0")]
    [InlineData("rescale_t", "true", "sparse_structure_sampler.params.rescale_t", "found a boolean")]
    public void RejectsBadSamplerParams(string key, string value, string path, string expected)
    {
        var message = Fails(Edit(a => Params(a)[key] = JsonNode.Parse(value)));
        Assert.Contains($"args.{path}", message);
        Assert.Contains(expected, message);
    }

    [Theory]
    [InlineData("1.0")]
    [InlineData("1.5")]
    [InlineData("-0.1")]
    public void RejectsSigmaMinOutsideTheUnitInterval(string value)
    {
        var message = Fails(Edit(a => a["slat_sampler"]!["args"]!["sigma_min"] = JsonNode.Parse(value)));
        Assert.Contains("args.slat_sampler.args.sigma_min", message);
        Assert.Contains("[0, 1)", message);
    }

    [Theory]
    [InlineData("models", "null", "args.models", "must be an object, found null")]
    [InlineData("models", "[]", "args.models", "must be an object, found an array")]
    [InlineData("sparse_structure_sampler", "null", "args.sparse_structure_sampler", "found null")]
    [InlineData("slat_sampler", "\"FlowEulerSampler\"", "args.slat_sampler", "found a string")]
    [InlineData("slat_normalization", "[]", "args.slat_normalization", "found an array")]
    public void RejectsWrongJsonTypes(string key, string value, string path, string expected)
    {
        var message = Fails(Edit(a => a[key] = JsonNode.Parse(value)));
        Assert.Contains(path, message);
        Assert.Contains(expected, message);
    }

    [Fact]
    public void RejectsBadModelsSamplersAndNormalizationNamingEveryKeyAtOnce()
    {
        var message = Fails(Edit(a =>
        {
            a["models"]!["slat_flow_model"] = 3;
            a["models"]!.AsObject().Remove("sparse_structure_decoder");
            a["models"]!["slat_decoder_gs"] = "../../etc/passwd";
            a["sparse_structure_sampler"]!["name"] = "DDIMSampler";
            a["slat_sampler"]!["params"]!["steps"] = -1;
            a["slat_normalization"]!["std"]![2] = 0.0;
            a["slat_normalization"]!["mean"]![0] = "x";
        }));
        Assert.Contains("args.models.slat_flow_model: must be a non-empty string", message);
        Assert.Contains("args.models.sparse_structure_decoder: is missing", message);
        Assert.Contains("args.models.slat_decoder_gs: must be a path inside the model folder", message);
        Assert.Contains("args.sparse_structure_sampler.name: unknown sampler class 'DDIMSampler'", message);
        Assert.Contains("args.slat_sampler.params.steps", message);
        Assert.Contains("args.slat_normalization.mean[0]", message);
        var std = Fails(Edit(a => a["slat_normalization"]!["std"]![2] = 0.0));
        Assert.Contains("args.slat_normalization.std[2]: must be > 0", std);
        var length = Fails(Edit(a => a["slat_normalization"]!["std"]!.AsArray().RemoveAt(0)));
        Assert.Contains("same, non-zero length", length);
    }

    [Fact]
    public void RejectsNonJsonAndNonObjectRoots()
    {
        Assert.Contains("not valid JSON", Fails("{\"args\": "));
        Assert.Contains("root must be an object", Fails("[1, 2]"));
        Assert.Contains("args: must be an object", Fails("{\"args\": 5}"));
    }

    [Fact]
    public void FromFolderRejectsABadPipelineJsonBeforeLoadingAnyCheckpoint()
    {
        // No ckpts/ at all: a FileNotFoundException would mean networks were being loaded before validation.
        var dir = Directory.CreateTempSubdirectory("mdtdist-pipejson-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "pipeline.json"), Edit(a => Params(a, "slat_sampler")["cfg_strength"] = -5));
            var e = Assert.Throws<InvalidDataException>(() => TrellisPipeline.FromFolder(dir));
            Assert.Contains(Path.Combine(dir, "pipeline.json"), e.Message);
            Assert.Contains("args.slat_sampler.params.cfg_strength", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void StageSamplersSetInCodeAreValidatedToo()
    {
        var p = TinyPipeline.Create();
        Assert.Throws<ArgumentException>(() => new TrellisPipeline(p.StructureFlow, p.StructureDecoder, p.LatentFlow, structureSampler: StageSampler.TrellisImageLarge with { Steps = 0 }));
        var e = Assert.Throws<ArgumentException>(() => (StageSampler.TrellisImageLarge with { CfgIntervalStart = 0.9, CfgIntervalEnd = 0.1, SigmaMin = 1 }).Validate());
        Assert.Contains("cfg_interval", e.Message);
        Assert.Contains("sigma_min", e.Message);
        using var cond = TinyPipeline.Condition();
        Assert.Throws<ArgumentException>(() => p.Run(cond, new TrellisRunOptions { LatentSampler = StageSampler.Student(1) with { RescaleT = -1 } }));
    }
}
