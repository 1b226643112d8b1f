using MdtDist.Trellis.Checkpoints;
using MdtDist.TestSupport;
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

public class GaussianDecoderTests
{
    /// <summary>ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16.json of TRELLIS-image-large.</summary>
    internal const string ReleasedConfig = """
        {"name": "SLatGaussianDecoder", "args": {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
         "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true,
         "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
           "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
           "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}}}
        """;

    private static GoldenCase Case(string name) => new(Path.Combine(GoldenParityTests.BundledDirectory, name + ".json"));

    [Fact]
    public void ReleasedIsTheReleasedCheckpointsArgs()
    {
        var fromJson = SLatGaussianDecoderConfig.FromArgs(System.Text.Json.Nodes.JsonNode.Parse(ReleasedConfig)!["args"]!.AsObject());
        Assert.Equal(fromJson.ToArgs().ToJsonString(), SLatGaussianDecoderConfig.Released.ToArgs().ToJsonString());
    }

    [Fact]
    public void ReleasedConfigBuildsWithTrellisNamesAndCount()
    {
        using var doc = JsonDocument.Parse(ReleasedConfig);
        using var scope = torch.NewDisposeScope();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float16, torch.META);
        Assert.True(model.parameters().All(p => p.is_meta && p.dtype == ScalarType.Float16));
        Assert.Equal(GaussianRepresentationConfig.Trellis, model.Representation);
        Assert.Equal(64, model.Resolution);

        const long C = 768, G = 32;
        var expected = new Dictionary<string, long[]>
        {
            ["input_layer.weight"] = new[] { C, 8L }, ["input_layer.bias"] = new[] { C },
            ["out_layer.weight"] = new[] { 14 * G, C }, ["out_layer.bias"] = new[] { 14 * G },
            ["offset_perturbation"] = new[] { G, 3L },
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
        var sd = model.state_dict();
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), sd.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (name, shape) in expected) Assert.Equal(shape, sd[name].shape);

        long block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C);
        long expectedCount = (8 * C + C) + 12 * block + (C * 14 * G + 14 * G);
        Assert.Equal(expectedCount, model.parameters().Sum(p => p.numel()));
        // 85.6M parameters: 171 MB in fp16, the size of the released safetensors file
        Assert.InRange(expectedCount * 2, 165_000_000, 175_000_000);
        // TRELLIS keeps the buffer in float32 when the torso is fp16
        Assert.Equal(ScalarType.Float32, model.OffsetPerturbation.dtype);
    }

    [Fact]
    public void OffsetPerturbationIsTheScaledHammersleySet()
    {
        const int g = 32;
        using var scope = torch.NewDisposeScope();
        var p = SLatGaussianDecoder.HammersleyPerturbation(g, 1.5, ScalarType.Float64, null);
        var h = (torch.tanh(p) * 1.5 + 1) / 2; // back to the point set
        var hv = h.data<double>().ToArray();
        for (int i = 0; i < g; i++)
        {
            Assert.Equal(i / (double)g, hv[3 * i], 12);
            // base-2 radical inverse = the 5 bits of i reversed
            int rev = 0;
            for (int bit = 0; bit < 5; bit++) if ((i & (1 << bit)) != 0) rev |= 1 << (4 - bit);
            Assert.Equal(rev / 32.0, hv[3 * i + 1], 12);
            // base-3 radical inverse, digit by digit from the top
            double v3 = 0, w = 1.0 / 3;
            for (int n = i; n > 0; n /= 3, w /= 3) v3 += (n % 3) * w;
            Assert.Equal(v3, hv[3 * i + 2], 12);
        }
        // distinct points: every Gaussian of a voxel gets its own offset
        Assert.Equal(g, hv.Chunk(3).Select(t => (t[0], t[1], t[2])).Distinct().Count());
    }

    [Fact]
    public void OffsetPerturbationLoadsThroughLoadStateDict()
    {
        using var c = Case("slat_dec_gs");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        var sd = c.WithPrefix("model.");
        var x = new SparseTensor(c["in.feats"], c["in.coords"]);
        model.load_state_dict(sd);
        var h = model.ForwardFeatures(x);
        var before = model.ToRepresentation(h);
        // a checkpoint's buffer replaces the built one and moves every Gaussian accordingly
        var custom = new Dictionary<string, Tensor>(sd) { ["offset_perturbation"] = torch.zeros(4, 3, dtype: ScalarType.Float64) };
        model.load_state_dict(custom);
        Assert.Equal(0.0, model.OffsetPerturbation.abs().max().item<double>());
        var after = model.ToRepresentation(h);
        try
        {
            var expectedShift = (torch.tanh(h.Feats[.., ..12].reshape(-1, 4, 3)) - torch.tanh(h.Feats[.., ..12].reshape(-1, 4, 3) + sd["offset_perturbation"]))
                / model.Resolution * 0.5 * model.Representation.VoxelSize;
            var n0 = before[0].Count;
            var shift = after[0].Xyz - before[0].Xyz;
            Assert.True(SparseTestData.MaxRel(expectedShift.flatten(0, 1)[..(int)n0], shift) < 1e-15);
        }
        finally
        {
            foreach (var gs in before.Concat(after)) gs.Dispose();
        }
    }

    [Fact]
    public void GaussiansStayNearTheirVoxelAndFollowRowOrder()
    {
        using var c = Case("slat_dec_gs");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        int g = model.Representation.NumGaussians, res = model.Resolution;

        // shuffle the rows inside each sample: the Gaussians of a voxel must move with it
        var coords = c["in.coords"];
        var feats = c["in.feats"];
        var rng = new Random(4);
        var perm = new List<long>();
        foreach (var b in new[] { 0L, 1L })
        {
            var rows = Enumerable.Range(0, (int)coords.shape[0]).Where(r => coords[r, 0].item<long>() == b).ToList();
            perm.AddRange(rows.OrderBy(_ => rng.Next()).Select(r => (long)r));
        }
        var pt = torch.tensor(perm.ToArray());
        var reference = model.forward(new SparseTensor(feats, coords, res));
        var shuffled = model.forward(new SparseTensor(feats.index_select(0, pt), coords.index_select(0, pt), res));
        try
        {
            long offset = 0;
            for (int b = 0; b < 2; b++)
            {
                long n = reference[b].Count / g;
                // Gaussian k of shuffled voxel j = Gaussian k of original voxel perm[j]
                var local = pt.narrow(0, offset, n) - offset;
                var idx = (local.unsqueeze(1) * g + torch.arange(g).unsqueeze(0)).flatten();
                Assert.True(SparseTestData.MaxRel(reference[b].Xyz.index_select(0, idx), shuffled[b].Xyz) < 1e-13);
                Assert.True(SparseTestData.MaxRel(reference[b].Rotation.index_select(0, idx), shuffled[b].Rotation) < 1e-13);
                Assert.True(SparseTestData.MaxRel(reference[b].Opacity.index_select(0, idx), shuffled[b].Opacity) < 1e-13);

                // every Gaussian lies within 0.5 * voxel_size voxels of its voxel centre
                var centres = ((coords.narrow(0, offset, n)[.., 1..].to(ScalarType.Float64) + 0.5) / res).repeat_interleave(g, 0);
                double reach = (reference[b].Xyz - centres).abs().max().item<double>();
                Assert.True(reach < 0.5 * model.Representation.VoxelSize / res, $"reach {reach}");
                offset += n;
            }
        }
        finally
        {
            foreach (var gs in reference.Concat(shuffled)) gs.Dispose();
        }
    }

    [Fact]
    public void Float32DecoderAgreesWithFloat64()
    {
        using var c = Case("slat_dec_gs");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var m64 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        var m32 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float32);
        SparseGolden.LoadExact(m64, c.WithPrefix("model."), c.Name);
        SparseGolden.LoadExact(m32, c.WithPrefix("model."), c.Name);
        Assert.Equal(ScalarType.Float32, m32.OffsetPerturbation.dtype);
        var x64 = new SparseTensor(c["in.feats"], c["in.coords"]);
        var x32 = new SparseTensor(c["in.feats"].to(ScalarType.Float32), c["in.coords"]);
        var a = m64.forward(x64);
        var b = m32.forward(x32);
        try
        {
            for (int i = 0; i < 2; i++)
            {
                Assert.Equal(ScalarType.Float32, b[i].Xyz.dtype);
                Assert.True(SparseTestData.MaxRel(a[i].GetXyz(), b[i].GetXyz()) < 1e-5);
                Assert.True(SparseTestData.MaxRel(a[i].GetScaling(), b[i].GetScaling()) < 1e-5);
                Assert.True(SparseTestData.MaxRel(a[i].GetRotation(), b[i].GetRotation()) < 1e-5);
            }
        }
        finally
        {
            foreach (var gs in a.Concat(b)) gs.Dispose();
        }
    }

    [Fact]
    public void HalfPrecisionTorsoRunsAsTrellisFp16()
    {
        using var c = Case("slat_dec_gs");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var m64 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        var m16 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float32);
        SparseGolden.LoadExact(m64, c.WithPrefix("model."), c.Name);
        SparseGolden.LoadExact(m16, c.WithPrefix("model."), c.Name);
        m16.SetTorsoDType(ScalarType.Float16);
        Assert.Equal(ScalarType.Float16, m16.TorsoDType);
        var h64 = m64.ForwardFeatures(new SparseTensor(c["in.feats"], c["in.coords"]));
        var h16 = m16.ForwardFeatures(new SparseTensor(c["in.feats"].to(ScalarType.Float32), c["in.coords"]));
        Assert.Equal(ScalarType.Float32, h16.Feats.dtype); // back in the input dtype after the torso
        // Bar derived from fp16's 11 significant bits and the number of fp16 layers (ReducedPrecision): 6·u·L.
        int layers = ReducedPrecision.RoundedLayers(m16, ScalarType.Float16);
        double err = ReducedPrecision.RelativeError(h64.Feats, h16.Feats);
        Assert.True(err < ReducedPrecision.Tolerance(ScalarType.Float16, layers) && err > ReducedPrecision.UnitRoundoff(ScalarType.Float32),
            $"fp16 torso error {err} over {layers} layers");
    }

    [Fact]
    public void DecodedGaussiansExportToTheReferencePly()
    {
        using var c = Case("slat_dec_gs");
        using var ply = Case("gs_ply");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        var sets = model.forward(new SparseTensor(c["in.feats"], c["in.coords"]));
        try
        {
            var data = GaussianPly.Parse(GaussianPly.ToBytes(sets[0], GaussianPly.DefaultTransform));
            var table = data.ToTensor().to(ScalarType.Float64);
            var expected = ply["out.vertex"];
            // float32 values computed from float64 Gaussians that agree to ~1e-16: at most one float32 ulp apart
            var ulp = expected.abs().clamp_min(1e-30) * Math.Pow(2, -23);
            Assert.True(((table - expected).abs() <= ulp * 1.0001 + 1e-12).all().item<bool>());
        }
        finally
        {
            foreach (var gs in sets) gs.Dispose();
        }
    }

    [Theory]
    [InlineData("\"bogus\": 1", "unknown argument(s) 'bogus'")]
    [InlineData("\"representation_config\": null", "missing required argument 'representation_config'")]
    [InlineData("\"scaling_activation\": \"relu\"", "'representation_config.scaling_activation': 'relu' is not 'softplus' or 'exp'")]
    [InlineData("\"_rotation\": 0.1", "missing required argument 'representation_config.lr._rotation'")]
    [InlineData("\"num_gaussians\": 32", "'representation_config.num_gaussians' = 2.5 is not an integer")]
    [InlineData("\"voxel_size\": 1.5", "representation_config.voxel_size must be >= 1")]
    [InlineData("\"attn_mode\": \"swin\"", "attn_mode 'shift_order'")]
    public void BadConfigsAreRejectedByName(string find, string message)
    {
        var json = ReleasedConfig;
        json = find switch
        {
            "\"bogus\": 1" => json.Replace("\"use_fp16\": true", "\"use_fp16\": true, \"bogus\": 1"),
            "\"representation_config\": null" => "{\"name\": \"SLatGaussianDecoder\", \"args\": {\"resolution\": 64, \"model_channels\": 768, \"latent_channels\": 8, \"num_blocks\": 12}}",
            "\"scaling_activation\": \"relu\"" => json.Replace("\"scaling_activation\": \"softplus\"", find),
            "\"_rotation\": 0.1" => json.Replace(", \"_rotation\": 0.1", ""),
            "\"num_gaussians\": 32" => json.Replace(find, "\"num_gaussians\": 2.5"),
            "\"voxel_size\": 1.5" => json.Replace(find, "\"voxel_size\": 0.9"),
            _ => json.Replace(find, "\"attn_mode\": \"shift_order\""),
        };
        using var doc = JsonDocument.Parse(json);
        var ex = Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float16, torch.META));
        Assert.Contains(message, ex.Message);
    }

    [Fact]
    public void WrongInputsAreRejected()
    {
        using var c = Case("slat_dec_gs");
        using var scope = torch.NewDisposeScope();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        var coords = c["in.coords"].clone();
        var ex = Assert.Throws<ArgumentException>(() => model.forward(new SparseTensor(c["in.feats"][.., ..4], coords)));
        Assert.Contains("[N, 8]", ex.Message);
        coords[0, 1] = 16;
        ex = Assert.Throws<ArgumentException>(() => model.forward(new SparseTensor(c["in.feats"], coords)));
        Assert.Contains("outside the decoder's grid [0, 16)", ex.Message);
        var x = new SparseTensor(torch.zeros(3, 5, dtype: ScalarType.Float64), c["in.coords"][..3]);
        Assert.Throws<ArgumentException>(() => model.ToRepresentation(x));
        using var wrong = JsonDocument.Parse("{\"name\": \"SLatMeshDecoder\", \"args\": {}}");
        Assert.Contains("SLatGaussianDecoder", Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(wrong.RootElement))).Message);
    }
}
