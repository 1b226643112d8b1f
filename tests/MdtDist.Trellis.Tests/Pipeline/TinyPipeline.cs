using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>A tiny random TRELLIS (4³ structure latent → 16³ grid) built from TRELLIS-style configs.</summary>
internal static class TinyPipeline
{
    public static readonly Dictionary<string, string> Configs = new()
    {
        ["ss_flow"] = """{"name": "SparseStructureFlowModel", "args": {"resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}}""",
        ["ss_dec"] = """{"name": "SparseStructureDecoder", "args": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [16, 8, 8], "num_res_blocks_middle": 1}}""",
        ["slat_flow"] = """{"name": "SLatFlowModel", "args": {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}}""",
        ["slat_dec_gs"] = """{"name": "SLatGaussianDecoder", "args": {"resolution": 16, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}}""",
    };

    public static nn.Module Build(string key, long seed, ScalarType dtype)
    {
        var node = JsonNode.Parse(Configs[key])!.AsObject();
        var model = TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()), dtype);
        return Randomize(model, seed);
    }

    /// <summary>Every parameter random as the goldens draw them: N(0, 1/fan_in) for matrices, 1 + N(0, 0.1²) for norm weights, N(0, 0.05²) for biases.</summary>
    public static T Randomize<T>(T model, long seed) where T : nn.Module
    {
        var g = new Generator((ulong)seed);
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            using var r = torch.randn(p.shape, dtype: ScalarType.Float64, generator: g);
            Tensor v;
            if (p.dim() >= 2) v = r / Math.Sqrt(p.numel() / (double)p.shape[0]);
            else if (name.EndsWith("bias")) v = r * 0.05;
            else v = 1 + 0.1 * r;
            p.copy_(v);
            v.Dispose();
        }
        return model;
    }

    public static TrellisPipeline Create(ScalarType dtype = ScalarType.Float32, long seed = 100) => new(
        (SparseStructureFlowModel)Build("ss_flow", seed, dtype),
        (SparseStructureDecoder)Build("ss_dec", seed + 1, dtype),
        (SLatFlowModel)Build("slat_flow", seed + 2, dtype),
        (SLatGaussianDecoder)Build("slat_dec_gs", seed + 3, dtype));

    public static Tensor Condition(int batch = 1, long seed = 7, ScalarType dtype = ScalarType.Float32) =>
        torch.randn(new long[] { batch, 6, 16 }, dtype: dtype, generator: new Generator((ulong)seed));

    /// <summary>Writes a TRELLIS model folder (pipeline.json + ckpts/NAME.json/.safetensors in fp16) for <paramref name="p"/>.</summary>
    public static string WriteFolder(TrellisPipeline p)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-trellis-").FullName;
        Directory.CreateDirectory(Path.Combine(dir, "ckpts"));
        void Write(string key, nn.Module m)
        {
            File.WriteAllText(Path.Combine(dir, "ckpts", key + ".json"), Configs[key]);
            SafeTensors.Save(Path.Combine(dir, "ckpts", key + ".safetensors"),
                m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.is_floating_point() ? kv.Value.to(ScalarType.Float32) : kv.Value));
        }
        Write("ss_flow", p.StructureFlow);
        Write("ss_dec", p.StructureDecoder);
        Write("slat_flow", p.LatentFlow);
        Write("slat_dec_gs", p.GaussianDecoder!);
        File.WriteAllText(Path.Combine(dir, "pipeline.json"), """
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
                "slat_normalization": {"mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133, -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
                                       "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695, 2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338]},
                "image_cond_model": "dinov2_vitl14_reg"
              }
            }
            """);
        return dir;
    }
}
