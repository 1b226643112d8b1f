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
    /// <summary>Test keys of the four networks → <see cref="RandomTinyTrellis"/>'s pipeline.json keys.</summary>
    private static readonly Dictionary<string, string> Keys = new()
    {
        ["ss_flow"] = "sparse_structure_flow_model", ["ss_dec"] = "sparse_structure_decoder",
        ["slat_flow"] = "slat_flow_model", ["slat_dec_gs"] = "slat_decoder_gs",
    };

    public static IReadOnlyDictionary<string, string> Configs { get; } = Keys.ToDictionary(kv => kv.Key, kv => RandomTinyTrellis.Configs[kv.Value]);

    public static nn.Module Build(string key, long seed, ScalarType dtype) => RandomTinyTrellis.Build(Keys[key], seed, dtype);

    public static T Randomize<T>(T model, long seed) where T : nn.Module => RandomTinyTrellis.Randomize(model, seed);

    public static TrellisPipeline Create(ScalarType dtype = ScalarType.Float32, long seed = 100) => RandomTinyTrellis.Create(dtype, seed);

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
