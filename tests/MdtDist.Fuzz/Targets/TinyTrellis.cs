using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Fuzz.Targets;

/// <summary>Tiny TRELLIS networks in TRELLIS's checkpoint layout, with deterministic weights, as fuzz seeds.</summary>
internal static class TinyTrellis
{
    public static readonly Dictionary<string, string> Configs = new()
    {
        ["ss_flow"] = """{"name": "SparseStructureFlowModel", "args": {"resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true, "share_mod": false}}""",
        ["ss_dec"] = """{"name": "SparseStructureDecoder", "args": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [16, 8, 8], "num_res_blocks_middle": 1, "norm_type": "layer"}}""",
        ["slat_flow"] = """{"name": "SLatFlowModel", "args": {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": false}}""",
        ["slat_dec_gs"] = """{"name": "SLatGaussianDecoder", "args": {"resolution": 16, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}}""",
    };

    public const string PipelineJson = """
        {
          "name": "TrellisImageTo3DPipeline",
          "args": {
            "models": {
              "sparse_structure_decoder": "ckpts/ss_dec",
              "sparse_structure_flow_model": "ckpts/ss_flow",
              "slat_decoder_gs": "ckpts/slat_dec_gs",
              "slat_flow_model": "ckpts/slat_flow"
            },
            "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05}, "params": {"steps": 12, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "slat_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05}, "params": {"steps": 12, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "slat_normalization": {"mean": [-2.17, -0.004, -0.13, -0.08, -0.53, 0.72, -1.14, 1.20], "std": [2.38, 2.39, 2.12, 2.17, 2.66, 2.37, 2.62, 2.68]},
            "image_cond_model": "dinov2_vitl14_reg"
          }
        }
        """;

    /// <summary>The config text and safetensors bytes (float16 storage, as released checkpoints) of network <paramref name="key"/>.</summary>
    public static (byte[] Json, byte[] Weights) Checkpoint(string key, ulong seed)
    {
        var node = JsonNode.Parse(Configs[key])!.AsObject();
        using var scope = torch.NewDisposeScope();
        using var model = TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()));
        var g = new Generator(seed);
        var sd = new Dictionary<string, Tensor>();
        foreach (var (name, t) in model.state_dict())
            sd[name] = t.is_floating_point() ? (torch.randn(t.shape, generator: g) * 0.1).to(ScalarType.Float16) : t.clone();
        var tmp = Path.Combine(Path.GetTempPath(), $"mdtdist-fuzz-{Guid.NewGuid():N}.safetensors");
        try
        {
            SafeTensors.Save(tmp, sd);
            return (System.Text.Encoding.UTF8.GetBytes(Configs[key]), File.ReadAllBytes(tmp));
        }
        finally { File.Delete(tmp); }
    }
}
