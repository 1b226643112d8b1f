using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace MiniTrellis.Model;

/// <summary>
/// The miniature two-stage TRELLIS, built from this library's TRELLIS classes at small width and depth and stored as a
/// TRELLIS model folder (<c>pipeline.json</c> + <c>ckpts/NAME.json</c> + <c>ckpts/NAME.safetensors</c>):
/// stage 1 = <see cref="SparseStructureEncoder"/>/<see cref="SparseStructureDecoder"/> (16³ occupancy ↔ 4³×8 latent)
/// and a <see cref="SparseStructureFlowModel"/> on the 4³ latent (64 tokens); stage 2 = <see cref="SLatEncoder"/>
/// (per-voxel RGB → 4 latent channels), <see cref="SLatGaussianDecoder"/> (latent → one coloured Gaussian per voxel)
/// and a <see cref="SLatFlowModel"/> (patch 2) generating the latents on the stage-1 voxels.
/// </summary>
public sealed class MiniTrellisModels
{
    /// <summary>Width of the class-condition tokens.</summary>
    public const int CondChannels = 32;

    /// <summary>Number of condition tokens per class.</summary>
    public const int CondTokens = 4;

    /// <summary>Latent channels of the structured latent.</summary>
    public const int SlatChannels = 4;

    /// <summary>The TRELLIS configs (<c>ckpts/NAME.json</c> content) by checkpoint name.</summary>
    public static IReadOnlyDictionary<string, string> Configs { get; } = new Dictionary<string, string>
    {
        ["ss_enc"] = """{"name": "SparseStructureEncoder", "args": {"in_channels": 1, "latent_channels": 8, "num_res_blocks": 0, "channels": [8, 16, 32], "num_res_blocks_middle": 1, "norm_type": "layer", "use_fp16": false}}""",
        ["ss_dec"] = """{"name": "SparseStructureDecoder", "args": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 0, "channels": [32, 16, 8], "num_res_blocks_middle": 1, "norm_type": "layer", "use_fp16": false}}""",
        ["ss_flow"] = """{"name": "SparseStructureFlowModel", "args": {"resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32, "num_blocks": 4, "num_heads": 4, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": false}}""",
        ["slat_enc"] = """{"name": "SLatEncoder", "args": {"resolution": 16, "in_channels": 3, "model_channels": 32, "latent_channels": 4, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "full", "pe_mode": "ape", "qk_rms_norm": false, "use_fp16": false}}""",
        ["slat_dec_gs"] = """{"name": "SLatGaussianDecoder", "args": {"resolution": 16, "model_channels": 32, "latent_channels": 4, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "full", "pe_mode": "ape", "qk_rms_norm": false, "use_fp16": false, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": false, "voxel_size": 1.5, "num_gaussians": 1, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}}""",
        ["slat_flow"] = """{"name": "SLatFlowModel", "args": {"resolution": 16, "in_channels": 4, "out_channels": 4, "model_channels": 64, "cond_channels": 32, "num_blocks": 4, "num_heads": 4, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [16], "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": false}}""",
    };

    /// <summary>Builds a fresh network of checkpoint <paramref name="name"/> (seeded PyTorch-default init).</summary>
    public static nn.Module Build(string name, long seed)
    {
        torch.manual_seed(seed);
        var node = JsonNode.Parse(Configs[name])!.AsObject();
        return TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()), ScalarType.Float32);
    }

    /// <summary>Structure VAE encoder.</summary>
    public required SparseStructureEncoder StructureEncoder { get; init; }

    /// <summary>Structure VAE decoder.</summary>
    public required SparseStructureDecoder StructureDecoder { get; init; }

    /// <summary>Stage-1 flow (the teacher).</summary>
    public required SparseStructureFlowModel StructureFlow { get; init; }

    /// <summary>Structured-latent encoder.</summary>
    public required SLatEncoder LatentEncoder { get; init; }

    /// <summary>Structured-latent Gaussian decoder.</summary>
    public required SLatGaussianDecoder GaussianDecoder { get; init; }

    /// <summary>Stage-2 flow (the teacher).</summary>
    public required SLatFlowModel LatentFlow { get; init; }

    /// <summary>Per-channel normalisation of the structured latent (TRELLIS's <c>slat_normalization</c>).</summary>
    public required SLatNormalization Normalization { get; init; }

    /// <summary>Fresh networks (untrained), identity normalisation.</summary>
    public static MiniTrellisModels CreateFresh(long seed = 1) => new()
    {
        StructureEncoder = (SparseStructureEncoder)Build("ss_enc", seed),
        StructureDecoder = (SparseStructureDecoder)Build("ss_dec", seed + 1),
        StructureFlow = (SparseStructureFlowModel)Build("ss_flow", seed + 2),
        LatentEncoder = (SLatEncoder)Build("slat_enc", seed + 3),
        GaussianDecoder = (SLatGaussianDecoder)Build("slat_dec_gs", seed + 4),
        LatentFlow = (SLatFlowModel)Build("slat_flow", seed + 5),
        Normalization = SLatNormalization.Identity(SlatChannels),
    };

    /// <summary>The folder of the shipped teachers next to the program (<c>model/</c>).</summary>
    public static string ShippedFolder => Path.Combine(AppContext.BaseDirectory, "model");

    /// <summary>Loads a model folder written by <see cref="Save"/> (strict TRELLIS checkpoint loading).</summary>
    /// <exception cref="FileNotFoundException">The folder or a checkpoint is missing.</exception>
    public static MiniTrellisModels Load(string folder)
    {
        var pj = Path.Combine(folder, "pipeline.json");
        if (!File.Exists(pj)) throw new FileNotFoundException($"'{folder}' holds no miniature TRELLIS: '{pj}' does not exist (run `train-teachers` first).", pj);
        string C(string n) => Path.Combine(folder, "ckpts", n);
        using var doc = JsonDocument.Parse(File.ReadAllText(pj));
        var n = doc.RootElement.GetProperty("args").GetProperty("slat_normalization");
        return new MiniTrellisModels
        {
            StructureEncoder = TrellisCheckpoint.Load<SparseStructureEncoder>(C("ss_enc")),
            StructureDecoder = TrellisCheckpoint.Load<SparseStructureDecoder>(C("ss_dec")),
            StructureFlow = TrellisCheckpoint.Load<SparseStructureFlowModel>(C("ss_flow")),
            LatentEncoder = TrellisCheckpoint.Load<SLatEncoder>(C("slat_enc")),
            GaussianDecoder = TrellisCheckpoint.Load<SLatGaussianDecoder>(C("slat_dec_gs")),
            LatentFlow = TrellisCheckpoint.Load<SLatFlowModel>(C("slat_flow")),
            Normalization = new SLatNormalization(
                n.GetProperty("mean").EnumerateArray().Select(e => e.GetDouble()).ToArray(),
                n.GetProperty("std").EnumerateArray().Select(e => e.GetDouble()).ToArray()),
        };
    }

    /// <summary>
    /// Writes the folder: every network in TRELLIS's checkpoint layout (float16 on disk when <paramref name="half"/>, as
    /// TRELLIS releases) and a TRELLIS <c>pipeline.json</c> (models, samplers, <c>slat_normalization</c>), so that
    /// <see cref="TrellisPipeline.FromFolder"/> also loads it.
    /// </summary>
    public void Save(string folder, bool half = true)
    {
        Directory.CreateDirectory(Path.Combine(folder, "ckpts"));
        ScalarType? store = half ? ScalarType.Float16 : null;
        void Write(nn.Module net, string name)
        {
            var stem = Path.Combine(folder, "ckpts", name);
            if (net is ITrellisModel)
            {
                TrellisCheckpoint.Save(net, stem, store);
                return;
            }
            // SLatEncoder / SLatGaussianDecoder do not report their args (no ITrellisModel): write the same layout from the config.
            using var scope = torch.NewDisposeScope();
            SafeTensors.Save(stem + ".safetensors", net.state_dict().ToDictionary(kv => kv.Key,
                kv => store is { } d && kv.Value.is_floating_point() ? kv.Value.detach().to(d) : kv.Value.detach()));
            WriteTextAtomically(stem + ".json", JsonNode.Parse(Configs[name])!.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        Write(StructureEncoder, "ss_enc");
        Write(StructureDecoder, "ss_dec");
        Write(StructureFlow, "ss_flow");
        Write(LatentEncoder, "slat_enc");
        Write(GaussianDecoder, "slat_dec_gs");
        Write(LatentFlow, "slat_flow");
        var sampler = new JsonObject
        {
            ["name"] = "FlowEulerGuidanceIntervalSampler",
            ["args"] = new JsonObject { ["sigma_min"] = 1e-5 },
            ["params"] = new JsonObject { ["steps"] = 25, ["cfg_strength"] = TeacherGuidance, ["cfg_interval"] = new JsonArray(0.5, 1.0), ["rescale_t"] = 3.0 },
        };
        var root = new JsonObject
        {
            ["name"] = "TrellisImageTo3DPipeline",
            ["args"] = new JsonObject
            {
                ["models"] = new JsonObject
                {
                    ["sparse_structure_encoder"] = "ckpts/ss_enc",
                    ["sparse_structure_decoder"] = "ckpts/ss_dec",
                    ["sparse_structure_flow_model"] = "ckpts/ss_flow",
                    ["slat_encoder"] = "ckpts/slat_enc",
                    ["slat_decoder_gs"] = "ckpts/slat_dec_gs",
                    ["slat_flow_model"] = "ckpts/slat_flow",
                },
                ["sparse_structure_sampler"] = sampler.DeepClone(),
                ["slat_sampler"] = sampler.DeepClone(),
                ["slat_normalization"] = new JsonObject
                {
                    ["mean"] = new JsonArray(Normalization.Mean.Select(v => (JsonNode)JsonValue.Create(v)).ToArray()),
                    ["std"] = new JsonArray(Normalization.Std.Select(v => (JsonNode)JsonValue.Create(v)).ToArray()),
                },
                ["cond_model"] = "class tokens (MiniTrellis.Model.ClassCondition)",
            },
        };
        WriteTextAtomically(Path.Combine(folder, "pipeline.json"), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Writes a text file through a temporary file and a rename, so no half-written file is left behind.</summary>
    public static void WriteTextAtomically(string path, string text)
    {
        var tmp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The teachers' guidance strength w (TRELLIS's <c>cfg_strength</c>) in the 25-step schedule.</summary>
    public const double TeacherGuidance = 3.0;

    /// <summary>A pipeline of the teachers with TRELLIS's schedule (25 steps, CFG on [0.5, 1], rescale_t 3).</summary>
    public TrellisPipeline Pipeline() => new(StructureFlow, StructureDecoder, LatentFlow, GaussianDecoder, Normalization,
        StageSampler.TrellisImageLarge with { CfgStrength = TeacherGuidance }, StageSampler.TrellisImageLarge with { CfgStrength = TeacherGuidance });
}

/// <summary>
/// Class conditioning as TRELLIS feeds image or text tokens: every class has a fixed set of <see cref="MiniTrellisModels.CondTokens"/>
/// tokens of width <see cref="MiniTrellisModels.CondChannels"/> (seeded Gaussian draws, layer-normed without affine as
/// TRELLIS normalises DINOv2 tokens); the negative condition is all zeros.
/// </summary>
public static class ClassCondition
{
    private static readonly Lazy<float[]> Table = new(() =>
    {
        using var g = new Generator(20260901);
        using var t = torch.randn(new long[] { Data.ShapeDistribution.ClassCount, MiniTrellisModels.CondTokens, MiniTrellisModels.CondChannels }, generator: g);
        using var n = nn.functional.layer_norm(t, new long[] { MiniTrellisModels.CondChannels });
        return n.data<float>().ToArray();
    });

    /// <summary>Condition tokens <c>[B, L, C]</c> for the given classes (float32, CPU).</summary>
    public static Tensor Tokens(IReadOnlyList<int> classes)
    {
        long l = MiniTrellisModels.CondTokens, c = MiniTrellisModels.CondChannels;
        var data = new float[classes.Count * l * c];
        for (int i = 0; i < classes.Count; i++)
            Array.Copy(Table.Value, classes[i] * l * c, data, i * l * c, l * c);
        return torch.tensor(data, new long[] { classes.Count, l, c });
    }
}
