using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>
/// A random tiny TRELLIS: the four networks of TRELLIS-image-large's architecture at toy sizes (a 4³ structure latent
/// decoded to a 16³ grid, 16-wide condition tokens, 4 Gaussians per voxel) with seeded random weights. It generates
/// nothing meaningful; it exercises the whole pipeline in milliseconds, for smoke tests, samples and benchmarks
/// without downloading a model.
/// </summary>
public static class RandomTinyTrellis
{
    /// <summary>The TRELLIS checkpoint configs (<c>{"name", "args"}</c>) of the four networks, by <c>pipeline.json</c> model key.</summary>
    public static IReadOnlyDictionary<string, string> Configs { get; } = new Dictionary<string, string>
    {
        ["sparse_structure_flow_model"] = """{"name": "SparseStructureFlowModel", "args": {"resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}}""",
        ["sparse_structure_decoder"] = """{"name": "SparseStructureDecoder", "args": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [16, 8, 8], "num_res_blocks_middle": 1}}""",
        ["slat_flow_model"] = """{"name": "SLatFlowModel", "args": {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}}""",
        ["slat_decoder_gs"] = """{"name": "SLatGaussianDecoder", "args": {"resolution": 16, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}}""",
    };

    /// <summary>Width of the condition tokens the tiny networks take.</summary>
    public const int ConditionChannels = 16;

    /// <summary>Builds the network of model key <paramref name="key"/> (see <see cref="Configs"/>) with random weights.</summary>
    /// <param name="key">A <c>pipeline.json</c> model key.</param>
    /// <param name="seed">Seed of the weights.</param>
    /// <param name="dtype">Parameter dtype.</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <exception cref="KeyNotFoundException">An unknown key.</exception>
    public static nn.Module Build(string key, long seed, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (!Configs.TryGetValue(key, out var json)) throw new KeyNotFoundException($"no tiny TRELLIS network '{key}' (known: {string.Join(", ", Configs.Keys)}).");
        var node = JsonNode.Parse(json)!.AsObject();
        var model = TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()), dtype, device);
        return Randomize(model, seed);
    }

    /// <summary>
    /// Overwrites every parameter of <paramref name="model"/> as the golden cases draw them (float64 on the CPU, so a seed
    /// gives the same weights in any dtype and on any device): matrices and kernels N(0, 1/fan_in), biases N(0, 0.05²),
    /// other vectors (norm weights) 1 + N(0, 0.1²).
    /// </summary>
    public static T Randomize<T>(T model, long seed) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        var g = new Generator((ulong)seed);
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            using var scope = torch.NewDisposeScope();
            var r = torch.randn(p.shape, dtype: ScalarType.Float64, generator: g);
            var v = p.dim() >= 2 ? r / Math.Sqrt(p.numel() / (double)p.shape[0]) : name.EndsWith("bias", StringComparison.Ordinal) ? r * 0.05 : 1 + 0.1 * r;
            p.copy_(v.to(p.device));
        }
        return model;
    }

    /// <summary>The checkpoint name (<c>ckpts/NAME</c>) of each network in a folder written by <see cref="WriteModelFolder"/>, by model key.</summary>
    public static IReadOnlyDictionary<string, string> CheckpointNames { get; } = new Dictionary<string, string>
    {
        ["sparse_structure_flow_model"] = "ss_flow", ["sparse_structure_decoder"] = "ss_dec",
        ["slat_flow_model"] = "slat_flow", ["slat_decoder_gs"] = "slat_dec_gs", ["slat_decoder_mesh"] = "slat_dec_mesh",
    };

    /// <summary>
    /// Writes <paramref name="pipeline"/> as a TRELLIS model folder that <see cref="TrellisPipeline.FromFolder"/> loads back:
    /// <c>pipeline.json</c> (its samplers, its normalisation, <c>image_cond_model</c> <c>dinov2_vitl14_reg</c>) and each network
    /// as <c>ckpts/NAME.json</c> + <c>.safetensors</c> (<see cref="CheckpointNames"/>) via <see cref="TrellisCheckpoint.Save"/>.
    /// </summary>
    /// <param name="pipeline">The pipeline (e.g. from <see cref="Create"/>).</param>
    /// <param name="directory">The folder (created when missing).</param>
    /// <param name="storeDType">Storage dtype of the weights (the networks' own when null; TRELLIS releases float16).</param>
    /// <exception cref="NotSupportedException">A sampler TRELLIS's pipeline.json cannot express (Heun, an explicit grid).</exception>
    public static void WriteModelFolder(TrellisPipeline pipeline, string directory, ScalarType? storeDType = null)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(directory);
        var networks = new Dictionary<string, nn.Module?>
        {
            ["sparse_structure_flow_model"] = pipeline.StructureFlow, ["sparse_structure_decoder"] = pipeline.StructureDecoder,
            ["slat_flow_model"] = pipeline.LatentFlow, ["slat_decoder_gs"] = pipeline.GaussianDecoder, ["slat_decoder_mesh"] = pipeline.MeshDecoder,
        };
        Directory.CreateDirectory(Path.Combine(directory, "ckpts"));
        var models = new JsonObject();
        foreach (var (key, model) in networks)
        {
            if (model is null) continue;
            TrellisCheckpoint.Save(model, Path.Combine(directory, "ckpts", CheckpointNames[key]), storeDType);
            models[key] = "ckpts/" + CheckpointNames[key];
        }
        var root = new JsonObject
        {
            ["name"] = "TrellisImageTo3DPipeline",
            ["args"] = new JsonObject
            {
                ["models"] = models,
                ["sparse_structure_sampler"] = pipeline.StructureSampler.ToPipelineJson(),
                ["slat_sampler"] = pipeline.LatentSampler.ToPipelineJson(),
                ["slat_normalization"] = new JsonObject
                {
                    ["mean"] = new JsonArray(pipeline.Normalization.Mean.Select(v => (JsonNode?)v).ToArray()),
                    ["std"] = new JsonArray(pipeline.Normalization.Std.Select(v => (JsonNode?)v).ToArray()),
                },
                ["image_cond_model"] = "dinov2_vitl14_reg",
            },
        };
        var text = new System.Text.UTF8Encoding(false).GetBytes(root.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        MdtDist.Core.IO.AtomicFile.Write(Path.Combine(directory, "pipeline.json"), fs => fs.Write(text));
    }

    /// <summary>A pipeline of the four tiny networks (weights from seeds <paramref name="seed"/> … <paramref name="seed"/> + 3).</summary>
    /// <param name="dtype">Parameter dtype.</param>
    /// <param name="seed">Seed of the first network's weights.</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <param name="structureSampler">Stage-1 sampler (TRELLIS-image-large's by default).</param>
    /// <param name="latentSampler">Stage-2 sampler (TRELLIS-image-large's by default).</param>
    public static TrellisPipeline Create(ScalarType dtype = ScalarType.Float32, long seed = 100, Device? device = null,
        StageSampler? structureSampler = null, StageSampler? latentSampler = null) => new(
        (SparseStructureFlowModel)Build("sparse_structure_flow_model", seed, dtype, device),
        (SparseStructureDecoder)Build("sparse_structure_decoder", seed + 1, dtype, device),
        (SLatFlowModel)Build("slat_flow_model", seed + 2, dtype, device),
        (SLatGaussianDecoder)Build("slat_decoder_gs", seed + 3, dtype, device),
        structureSampler: structureSampler, latentSampler: latentSampler);
}
