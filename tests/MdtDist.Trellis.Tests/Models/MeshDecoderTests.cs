using MdtDist.Trellis.Checkpoints;
using System.Text.Json;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Golden;
using MdtDist.Trellis.Tests.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

public class MeshDecoderTests
{
    /// <summary>ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16.json of TRELLIS-image-large.</summary>
    private const string ReleasedConfig = """
        {"name": "SLatMeshDecoder", "args": {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
         "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true,
         "representation_config": {"use_color": true}}}
        """;

    private static GoldenCase Case(string name) => new(Path.Combine(GoldenParityTests.BundledDirectory, name + ".json"));

    [Fact]
    public void ReleasedIsTheReleasedCheckpointsArgs()
    {
        var fromJson = SLatMeshDecoderConfig.FromArgs(System.Text.Json.Nodes.JsonNode.Parse(ReleasedConfig)!["args"]!.AsObject());
        Assert.Equal(fromJson.ToArgs().ToJsonString(), SLatMeshDecoderConfig.Released.ToArgs().ToJsonString());
    }

    [Fact]
    public void ReleasedConfigBuildsWithTrellisNamesAndCount()
    {
        using var doc = JsonDocument.Parse(ReleasedConfig);
        using var scope = torch.NewDisposeScope();
        var model = TrellisCheckpoint.Build<SLatMeshDecoder>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float16, torch.META);
        Assert.True(model.parameters().All(p => p.is_meta));
        Assert.Equal(256, model.MeshResolution);
        Assert.Equal(101, model.OutChannels);

        const long C = 768, K = 27, C4 = C / 4, C8 = C / 8;
        var expected = new Dictionary<string, long[]>
        {
            ["input_layer.weight"] = new[] { C, 8L }, ["input_layer.bias"] = new[] { C },
            ["out_layer.weight"] = new[] { 101L, C8 }, ["out_layer.bias"] = new[] { 101L },
        };
        for (int i = 0; i < 12; i++)
        {
            expected[$"blocks.{i}.attn.to_qkv.weight"] = new[] { 3 * C, C };
            expected[$"blocks.{i}.attn.to_qkv.bias"] = new[] { 3 * C };
            expected[$"blocks.{i}.attn.to_out.weight"] = new[] { C, C };
            expected[$"blocks.{i}.attn.to_out.bias"] = new[] { C };
            expected[$"blocks.{i}.mlp.mlp.0.weight"] = new[] { 4 * C, C };
            expected[$"blocks.{i}.mlp.mlp.0.bias"] = new[] { 4 * C };
            expected[$"blocks.{i}.mlp.mlp.2.weight"] = new[] { C, 4 * C };
            expected[$"blocks.{i}.mlp.mlp.2.bias"] = new[] { C };
        }
        foreach (var (u, cin, cout) in new[] { (0, C, C4), (1, C4, C8) })
        {
            expected[$"upsample.{u}.act_layers.0.weight"] = new[] { cin };
            expected[$"upsample.{u}.act_layers.0.bias"] = new[] { cin };
            expected[$"upsample.{u}.out_layers.0.conv.weight"] = new[] { cout, 3L, 3L, 3L, cin };
            expected[$"upsample.{u}.out_layers.0.conv.bias"] = new[] { cout };
            expected[$"upsample.{u}.out_layers.1.weight"] = new[] { cout };
            expected[$"upsample.{u}.out_layers.1.bias"] = new[] { cout };
            expected[$"upsample.{u}.out_layers.3.conv.weight"] = new[] { cout, 3L, 3L, 3L, cout };
            expected[$"upsample.{u}.out_layers.3.conv.bias"] = new[] { cout };
            expected[$"upsample.{u}.skip_connection.conv.weight"] = new[] { cout, 1L, 1L, 1L, cin };
            expected[$"upsample.{u}.skip_connection.conv.bias"] = new[] { cout };
        }
        var sd = model.state_dict();
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), sd.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (name, shape) in expected) Assert.Equal(shape, sd[name].shape);

        long block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C);
        long Up(long cin, long cout) => 2 * cin + (K * cin * cout + cout) + 2 * cout + (K * cout * cout + cout) + (cin * cout + cout);
        long expectedCount = (8 * C + C) + 12 * block + Up(C, C4) + Up(C4, C8) + (C8 * 101 + 101);
        Assert.Equal(expectedCount, model.parameters().Sum(p => p.numel()));
        // ~90.7M parameters: 182 MB in fp16, the size of the released safetensors file
        Assert.InRange(expectedCount * 2, 175_000_000, 185_000_000);

        // TRELLIS's convert_to_fp16 for this decoder: block linears and subdivide convs; norms and io layers stay
        var m32 = TrellisCheckpoint.Build<SLatMeshDecoder>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float32, torch.META);
        m32.SetTorsoDType(ScalarType.Float16);
        var dtypes = m32.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.dtype);
        Assert.Equal(ScalarType.Float16, dtypes["blocks.3.attn.to_qkv.weight"]);
        Assert.Equal(ScalarType.Float16, dtypes["upsample.1.out_layers.3.conv.weight"]);
        Assert.Equal(ScalarType.Float16, dtypes["upsample.0.skip_connection.conv.weight"]);
        Assert.Equal(ScalarType.Float32, dtypes["upsample.0.act_layers.0.weight"]);
        Assert.Equal(ScalarType.Float32, dtypes["upsample.1.out_layers.1.bias"]);
        Assert.Equal(ScalarType.Float32, dtypes["out_layer.weight"]);
        Assert.Equal(ScalarType.Float32, dtypes["input_layer.weight"]);
    }

    [Fact]
    public void SubdivideBlockWithoutChannelChangeHasAnIdentitySkip()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var block = new SparseSubdivideBlock3d(8, 4, null, 4, ScalarType.Float64);
        Assert.DoesNotContain(block.state_dict().Keys, k => k.StartsWith("skip_connection", StringComparison.Ordinal));
        // with the last conv zeroed (TRELLIS's zero_module init), the block is the identity on the subdivided input
        foreach (var (name, p) in block.named_parameters())
            if (name.StartsWith("out_layers.3.", StringComparison.Ordinal)) p.zero_();
        var coords = SparseTestData.RandomCoords(4, new[] { 5, 3 }, 11);
        var x = new SparseTensor(torch.randn(8, 8, dtype: ScalarType.Float64), coords, 4);
        var y = block.Forward(x);
        Assert.Equal(64, y.Count);
        Assert.True(y.Feats.eq(x.Feats.repeat_interleave(8, 0)).all().item<bool>());
        Assert.True(y.Coords.eq(SparseSpatial.Subdivide(x).Coords).all().item<bool>());
    }

    [Fact]
    public void DecoderFeedsEachSampleItsOwnCubesAndIsRowOrderInvariant()
    {
        using var c = Case("slat_dec_mesh");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = new SLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args) with { SubdivideNumGroups = 8 }, ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        var coords = c["in.coords"];
        var feats = c["in.feats"];
        // reverse the rows of each sample
        var rows = new List<long>();
        foreach (var b in new[] { 0L, 1L })
            rows.AddRange(Enumerable.Range(0, (int)coords.shape[0]).Where(r => coords[r, 0].item<long>() == b).Reverse().Select(r => (long)r));
        var perm = torch.tensor(rows.ToArray());
        var a = model.forward(new SparseTensor(feats, coords, model.Resolution));
        var r2 = model.forward(new SparseTensor(feats.index_select(0, perm), coords.index_select(0, perm), model.Resolution));
        try
        {
            for (int b = 0; b < 2; b++)
            {
                // same vertices (sorted) and attributes whatever the cube order
                Assert.True(a[b].VertexPositions.eq(r2[b].VertexPositions).all().item<bool>());
                Assert.True(SparseTestData.MaxRel(a[b].VertexAttributes, r2[b].VertexAttributes) < 1e-13);
                Assert.Equal(64 * coords[.., 0].eq(b).sum().item<long>(), a[b].CubeCount);
                // the cubes of a sample are the subdivided (twice) voxels of that sample
                var voxels = coords.index_select(0, coords[.., 0].eq(b).nonzero().squeeze(1))[.., 1..];
                var parents = a[b].CubeCoords.div(4, RoundingMode.floor);
                var vcode = (voxels[.., 0] * 64 + voxels[.., 1]) * 64 + voxels[.., 2];
                var pcode = (parents[.., 0] * 64 + parents[.., 1]) * 64 + parents[.., 2];
                Assert.True(torch.isin(pcode, vcode).all().item<bool>());
                Assert.Equal(vcode.shape[0], pcode.unique().output.shape[0]);
            }
        }
        finally
        {
            foreach (var fc in a.Concat(r2)) fc.Dispose();
        }
    }

    [Fact]
    public void HalfPrecisionTorsoAndUpsamplingRunAsTrellisFp16()
    {
        using var c = Case("slat_dec_mesh");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var m64 = new SLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args) with { SubdivideNumGroups = 8 }, ScalarType.Float64);
        var m16 = new SLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args) with { SubdivideNumGroups = 8 }, ScalarType.Float32);
        SparseGolden.LoadExact(m64, c.WithPrefix("model."), c.Name);
        SparseGolden.LoadExact(m16, c.WithPrefix("model."), c.Name);
        m16.SetTorsoDType(ScalarType.Float16);
        var h64 = m64.ForwardFeatures(new SparseTensor(c["in.feats"], c["in.coords"]));
        var h16 = m16.ForwardFeatures(new SparseTensor(c["in.feats"].to(ScalarType.Float32), c["in.coords"]));
        Assert.Equal(ScalarType.Float32, h16.Feats.dtype);
        double err = SparseTestData.MaxRel(h64.Feats, h16.Feats);
        Assert.True(err < 2e-2 && err > 1e-7, $"fp16 error {err}");
    }

    [Fact]
    public void ColourlessDecoderHas53ChannelsAndNoColours()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        // the public constructor fixes TRELLIS's num_groups = 32 (model_channels a multiple of 256); shrink it here
        var cfg = new SLatMeshDecoderConfig { Resolution = 4, ModelChannels = 32, LatentChannels = 8, NumBlocks = 1, UseColor = false, NumHeads = 2, WindowSize = 2 };
        Assert.Throws<ArgumentException>(() => new SLatMeshDecoder(cfg, ScalarType.Float64));
        var model = new SLatMeshDecoder(cfg with { SubdivideNumGroups = 4 }, ScalarType.Float64);
        Assert.Equal(53, model.OutChannels);
        var coords = SparseTestData.RandomCoords(4, new[] { 3 }, 2);
        var items = model.forward(new SparseTensor(torch.randn(3, 8, dtype: ScalarType.Float64), coords, 4));
        try
        {
            Assert.Single(items);
            Assert.Equal(4, items[0].VertexAttributes.shape[1]);
            Assert.Null(items[0].DenseColors());
            Assert.Equal(16, items[0].Resolution);
        }
        finally
        {
            foreach (var fc in items) fc.Dispose();
        }
    }

    [Theory]
    [InlineData("\"mesh_extractor\": \"mc\"", "mesh_extractor 'mc' is not supported")]
    [InlineData("\"use_color\": 1", "'representation_config.use_color' = 1 is not a boolean")]
    [InlineData("\"model_channels\": 760", "model_channels 760")]
    [InlineData("\"extra\": 3", "unknown argument(s) 'extra'")]
    public void BadConfigsAreRejectedByName(string change, string message)
    {
        var json = change switch
        {
            "\"use_color\": 1" => ReleasedConfig.Replace("\"use_color\": true", change),
            "\"model_channels\": 760" => ReleasedConfig.Replace("\"model_channels\": 768", change).Replace("\"num_heads\": 12", "\"num_heads\": 8"),
            _ => ReleasedConfig.Replace("\"use_fp16\": true", "\"use_fp16\": true, " + change),
        };
        using var doc = JsonDocument.Parse(json);
        var ex = Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build<SLatMeshDecoder>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float16, torch.META));
        Assert.Contains(message, ex.Message);
    }
}
