using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>The released configurations build (on the meta device: shapes only) with the names and sizes they imply.</summary>
public class ReleasedConfigTests
{
    /// <summary>Every parameter name and shape the TRELLIS flow config implies, written from the architecture description (not from the model code).</summary>
    private static Dictionary<string, long[]> ExpectedFlowParameters(long c, long cc, long cin, long cout, long p, long blocks, long heads, long hidden, bool qkRms, bool qkRmsCross)
    {
        long d = c / heads, p3 = p * p * p;
        var e = new Dictionary<string, long[]>
        {
            ["t_embedder.mlp.0.weight"] = new[] { c, 256L }, ["t_embedder.mlp.0.bias"] = new[] { c },
            ["t_embedder.mlp.2.weight"] = new[] { c, c }, ["t_embedder.mlp.2.bias"] = new[] { c },
            ["input_layer.weight"] = new[] { c, cin * p3 }, ["input_layer.bias"] = new[] { c },
            ["out_layer.weight"] = new[] { cout * p3, c }, ["out_layer.bias"] = new[] { cout * p3 },
        };
        for (long i = 0; i < blocks; i++)
        {
            string b = $"blocks.{i}.";
            e[b + "adaLN_modulation.1.weight"] = new[] { 6 * c, c }; e[b + "adaLN_modulation.1.bias"] = new[] { 6 * c };
            e[b + "self_attn.to_qkv.weight"] = new[] { 3 * c, c }; e[b + "self_attn.to_qkv.bias"] = new[] { 3 * c };
            e[b + "self_attn.to_out.weight"] = new[] { c, c }; e[b + "self_attn.to_out.bias"] = new[] { c };
            if (qkRms) { e[b + "self_attn.q_rms_norm.gamma"] = new[] { heads, d }; e[b + "self_attn.k_rms_norm.gamma"] = new[] { heads, d }; }
            e[b + "cross_attn.to_q.weight"] = new[] { c, c }; e[b + "cross_attn.to_q.bias"] = new[] { c };
            e[b + "cross_attn.to_kv.weight"] = new[] { 2 * c, cc }; e[b + "cross_attn.to_kv.bias"] = new[] { 2 * c };
            e[b + "cross_attn.to_out.weight"] = new[] { c, c }; e[b + "cross_attn.to_out.bias"] = new[] { c };
            if (qkRmsCross) { e[b + "cross_attn.q_rms_norm.gamma"] = new[] { heads, d }; e[b + "cross_attn.k_rms_norm.gamma"] = new[] { heads, d }; }
            e[b + "norm2.weight"] = new[] { c }; e[b + "norm2.bias"] = new[] { c };
            e[b + "mlp.mlp.0.weight"] = new[] { hidden, c }; e[b + "mlp.mlp.0.bias"] = new[] { hidden };
            e[b + "mlp.mlp.2.weight"] = new[] { c, hidden }; e[b + "mlp.mlp.2.bias"] = new[] { c };
        }
        return e;
    }

    /// <summary>Closed-form parameter count of the flow DiT (independent of the name list above).</summary>
    private static long FlowParameterCount(long c, long cc, long cin, long cout, long p, long blocks, long heads, long hidden, bool qkRms)
    {
        long p3 = p * p * p;
        long embed = (256 * c + c) + (c * c + c);
        long io = (cin * p3 * c + c) + (c * cout * p3 + cout * p3);
        long selfAttn = 4 * c * c + 4 * c + (qkRms ? 2 * c : 0);        // qkv (3C²+3C) + out (C²+C) + 2 gammas of H·D = C
        long crossAttn = c * c + c + cc * 2 * c + 2 * c + c * c + c;     // q + kv + out
        long mlp = 2 * c * hidden + hidden + c;
        long block = selfAttn + crossAttn + mlp + 2 * c + (6 * c * c + 6 * c);
        return embed + io + blocks * block;
    }

    [Fact]
    public void ImageLargeFlowBuildsOnMetaWithTheImpliedParameters()
    {
        var cfg = SparseStructureFlowConfig.ImageLarge;
        using var model = new SparseStructureFlowModel(cfg, ScalarType.Float32, torch.META);
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        var expected = ExpectedFlowParameters(1024, 1024, 8, 8, 1, 24, 16, 4096, qkRms: true, qkRmsCross: false);
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), parameters.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (name, shape) in expected) Assert.True(shape.SequenceEqual(parameters[name]), $"{name}: [{string.Join(", ", parameters[name])}] vs [{string.Join(", ", shape)}]");
        long count = parameters.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        Assert.Equal(FlowParameterCount(1024, 1024, 8, 8, 1, 24, 16, 4096, qkRms: true), count);
        Assert.Equal(24 * 20 + 8, parameters.Count);
        // The one persistent buffer: the APE of the 16³ token grid.
        var buffers = model.named_buffers().ToList();
        Assert.Single(buffers);
        Assert.Equal("pos_emb", buffers[0].name);
        Assert.Equal(new long[] { 4096, 1024 }, buffers[0].buffer.shape);
        Assert.True(model.parameters().All(p => p.is_meta));
    }

    [Fact]
    public void ReleasedDecoderBuildsOnMetaWithTheImpliedParameters()
    {
        var cfg = SparseStructureDecoderConfig.Released;
        using var model = new SparseStructureDecoder(cfg, ScalarType.Float32, torch.META);
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        // Independent count: input conv, middle res blocks at ch[0], per stage res blocks and an upsampling conv, output norm + conv.
        long[] ch = { 512, 128, 32 };
        long Res(long c) => 2 * (27 * c * c + c) + 4 * c;                 // two 3³ convs + two channel LayerNorms
        long expected = (27 * 8 * ch[0] + ch[0]) + 2 * Res(ch[0])
            + 2 * Res(ch[0]) + (27 * ch[0] * ch[1] * 8 + ch[1] * 8)
            + 2 * Res(ch[1]) + (27 * ch[1] * ch[2] * 8 + ch[2] * 8)
            + 2 * Res(ch[2])
            + 2 * ch[2] + (27 * ch[2] * 1 + 1);
        Assert.Equal(expected, parameters.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b)));
        Assert.Equal(new long[] { 512, 8, 3, 3, 3 }, parameters["input_layer.weight"]);
        Assert.Equal(new long[] { 128 * 8, 512, 3, 3, 3 }, parameters["blocks.2.conv.weight"]);
        Assert.Equal(new long[] { 32 * 8, 128, 3, 3, 3 }, parameters["blocks.5.conv.weight"]);
        Assert.Equal(new long[] { 1, 32, 3, 3, 3 }, parameters["out_layer.2.weight"]);
        Assert.Equal(new long[] { 32 }, parameters["out_layer.0.weight"]);
        Assert.Contains("middle_block.1.norm2.bias", parameters.Keys);
        Assert.Empty(model.named_buffers());
    }

    [Fact]
    public void ReleasedConfigJsonIsReadAsTrellisWritesIt()
    {
        // ckpts/ss_flow_img_dit_L_16l8_fp16.json as released (args of configs/generation/ss_flow_img_dit_L_16l8_fp16.json).
        var dir = Directory.CreateTempSubdirectory("mdtdist-cfg");
        try
        {
            var stem = Path.Combine(dir.FullName, "ss_flow_img_dit_L_16l8_fp16");
            File.WriteAllText(stem + ".json", """
                {"name": "SparseStructureFlowModel", "args": {"resolution": 16, "in_channels": 8, "out_channels": 8,
                 "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4,
                 "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true}}
                """);
            var config = TrellisCheckpoint.ReadConfig(stem);
            Assert.Equal("SparseStructureFlowModel", config.Name);
            Assert.Equal(SparseStructureFlowConfig.ImageLarge, SparseStructureFlowConfig.FromArgs(config.Args));
            using var model = TrellisCheckpoint.Build(config, ScalarType.Float32, torch.META);
            Assert.IsType<SparseStructureFlowModel>(model);
        }
        finally { dir.Delete(true); }
    }
}
