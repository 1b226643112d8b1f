using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.TestSupport;
using System.Text.Json;
using MdtDist.Core.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

public class SLatModelTests
{
    private static GoldenCase Case(string name) => new(Path.Combine(GoldenParityTests.BundledDirectory, name + ".json"));

    private static SLatFlowModel GoldenFlow(GoldenCase c)
    {
        var model = TrellisCheckpoint.Build<SLatFlowModel>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        return model;
    }

    /// <summary>A random permutation of the rows inside each sample (rows stay contiguous per sample).</summary>
    private static Tensor PermuteWithinSamples(Tensor coords, int seed)
    {
        var rng = new Random(seed);
        var sample = coords[.., 0].data<long>().ToArray();
        var perm = Enumerable.Range(0, sample.Length).GroupBy(i => sample[i])
            .SelectMany(g => g.OrderBy(_ => rng.Next())).Select(i => (long)i).ToArray();
        return torch.tensor(perm);
    }

    [Fact]
    public void FlowOutputFollowsAnyRowOrderWithinSamples()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = GoldenFlow(c);
        var perm = PermuteWithinSamples(c["in.coords"], 1);
        var x = new SparseTensor(c["in.feats"].index_select(0, perm), c["in.coords"].index_select(0, perm), 16);
        var y = model.forward(x, c["in.t"], c["in.cond"]);
        var expected = c["out.feats"].index_select(0, perm);
        Assert.True(SparseTestData.MaxRel(expected, y.Feats) < 1e-12, $"{SparseTestData.MaxRel(expected, y.Feats)}");
        Assert.Same(x.Coordinates, y.Coordinates);
    }

    [Fact]
    public void EncoderOutputFollowsAnyRowOrderWithinSamples()
    {
        using var c = Case("slat_enc");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatEncoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        var perm = PermuteWithinSamples(c["in.coords"], 2);
        var x = new SparseTensor(c["in.feats"].index_select(0, perm), c["in.coords"].index_select(0, perm), 16);
        var y = model.forward(x);
        Assert.True(SparseTestData.MaxRel(c["out.mean"].index_select(0, perm), y.Mean) < 1e-12);
        Assert.True(SparseTestData.MaxRel(c["out.logvar"].index_select(0, perm), y.LogVar) < 1e-12);

        // A posterior sample is mean + exp(logvar / 2) * eps.
        var g = new Generator(5);
        var z = model.Encode(x, samplePosterior: true, generator: g).Z.Feats;
        var eps = (z - y.Mean) / (0.5 * y.LogVar).exp();
        Assert.True(eps.std().item<double>() is > 0.8 and < 1.2);
    }

    [Fact]
    public void AdapterScalesTimeRepeatsTheConditionAndKeepsTheLayout()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = GoldenFlow(c);
        var adapter = new SLatFlowAdapter(model);
        var x = new SparseTensor(c["in.feats"], c["in.coords"], 16);
        var latent = x.ToLatent();

        var v = adapter.Velocity(latent, c["in.t"] / 1000.0, c["in.cond"]);
        Assert.True(SparseTestData.MaxRel(c["out.feats"], v) < 1e-12);

        // A batch-1 condition is repeated to every sample.
        var cond1 = c["in.cond"][..1];
        var vRep = adapter.Velocity(latent, c["in.t"] / 1000.0, cond1);
        var direct = model.forward(x, c["in.t"], cond1.expand(2, -1, -1)).Feats;
        Assert.True(SparseTestData.MaxRel(direct, vRep) < 1e-15);

        // Core's flow path works on the sparse layout.
        // Core's flow path broadcasts per-sample times over each sample's rows.
        var path = RectifiedFlowPath.Trellis;
        var noise = torch.randn_like(latent.Data);
        var tt = torch.tensor(new[] { 0.3, 0.8 }, dtype: ScalarType.Float64);
        var xt = latent.With(path.Interpolate(latent, noise, tt));
        Assert.IsType<SparseLatentLayout>(xt.Layout);
        long n0 = x.Coordinates.RowCounts[0];
        var expectedRow = (1 - 0.8) * latent.Data[n0] + (1e-5 + (1 - 1e-5) * 0.8) * noise[n0];
        Assert.True(SparseTestData.MaxRel(expectedRow, xt.Data[n0]) < 1e-15);
        var vt = adapter.Velocity(xt, tt, c["in.cond"]);
        Assert.Equal(latent.Data.shape, vt.shape);
    }

    [Fact]
    public void BadConditionsAndGridsAreRejectedWithClearMessages()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = GoldenFlow(c);
        var adapter = new SLatFlowAdapter(model);
        var x = new SparseTensor(c["in.feats"], c["in.coords"], 16);
        var t = c["in.t"];

        var wide = torch.zeros(2, 5, 33, dtype: ScalarType.Float64);
        var ex = Assert.Throws<ArgumentException>(() => adapter.Velocity(x.ToLatent(), t / 1000, wide));
        Assert.Contains("width 33", ex.Message);
        Assert.Contains("cond_channels is 32", ex.Message);
        var ex2 = Assert.Throws<ArgumentException>(() => model.forward(x, t, wide));
        Assert.Contains("cond_channels=32", ex2.Message);
        Assert.Throws<ArgumentException>(() => adapter.Velocity(x.ToLatent(), t / 1000, torch.zeros(3, 5, 32, dtype: ScalarType.Float64)));
        Assert.Throws<ArgumentException>(() => adapter.Velocity(x.ToLatent(), t / 1000, null));
        Assert.Throws<ArgumentException>(() => adapter.Velocity(Latent.Dense(torch.zeros(2, 8)), t / 1000, c["in.cond"]));

        // Coordinates beyond the model's grid (16): rejected by the model even when the tensor had no resolution.
        var coords = c["in.coords"].clone();
        coords[0, 1] = 16;
        var outside = new SparseTensor(c["in.feats"], coords);
        var ex3 = Assert.Throws<ArgumentException>(() => model.forward(outside, t, c["in.cond"]));
        Assert.Contains("outside the model's grid [0, 16)", ex3.Message);
        Assert.Throws<ArgumentException>(() => new SparseTensor(c["in.feats"], coords, 16));

        Assert.Throws<ArgumentException>(() => model.forward(x.ReplaceFeats(torch.zeros(x.Count, 7, dtype: ScalarType.Float64)), t, c["in.cond"]));
    }

    [Fact]
    public void ConfigsAreReadStrictly()
    {
        using var c = Case("slat_flow");
        var cfg = SLatFlowConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args);
        Assert.Equal(2, cfg.PatchSize);
        Assert.Equal(new long[] { 8 }, cfg.IoBlockChannels);

        static System.Text.Json.Nodes.JsonObject Args(string json) => System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        const string baseArgs = "\"resolution\": 16, \"in_channels\": 8, \"out_channels\": 8, \"model_channels\": 64, \"cond_channels\": 32, \"num_blocks\": 1, \"num_heads\": 4, \"patch_size\": 2, \"io_block_channels\": [8]";
        Assert.Contains("unknown argument(s) 'bogus'", Assert.Throws<ArgumentException>(() => SLatFlowConfig.FromArgs(Args("{" + baseArgs + ", \"bogus\": 1}"))).Message);
        Assert.Contains("share_mod", Assert.Throws<ArgumentException>(() => new SLatFlowModel(SLatFlowConfig.FromArgs(Args("{" + baseArgs + ", \"share_mod\": true}")), ScalarType.Float64)).Message);
        Assert.Contains("qk_rms_norm_cross", Assert.Throws<ArgumentException>(() => new SLatFlowModel(SLatFlowConfig.FromArgs(Args("{" + baseArgs + ", \"qk_rms_norm_cross\": true}")), ScalarType.Float64)).Message);
        Assert.Contains("patch_size", Assert.Throws<ArgumentException>(() => new SLatFlowModel(SLatFlowConfig.FromArgs(Args("{" + baseArgs.Replace("\"patch_size\": 2", "\"patch_size\": 4") + "}")), ScalarType.Float64)).Message);
        Assert.Contains("not a SLatFlowModel", Assert.Throws<ArgumentException>(() => TrellisCheckpoint.Build<SLatFlowModel>(new TrellisModelConfig("SparseStructureFlowModel", Args("{\"resolution\": 4, \"in_channels\": 2, \"model_channels\": 8, \"cond_channels\": 4, \"out_channels\": 2, \"num_blocks\": 1, \"num_heads\": 2}")), ScalarType.Float64)).Message);
        Assert.Contains("missing required argument 'cond_channels'", Assert.Throws<ArgumentException>(() => SLatFlowConfig.FromArgs(Args("{\"resolution\": 16, \"in_channels\": 8, \"out_channels\": 8, \"model_channels\": 64, \"num_blocks\": 1}"))).Message);
    }

    [Fact]
    public void FlowBackpropagatesThroughEveryParameter()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        var model = GoldenFlow(c);
        var x = new SparseTensor(c["in.feats"], c["in.coords"], 16);
        var y = model.forward(x, c["in.t"], c["in.cond"]);
        y.Feats.square().mean().backward();
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.True(p.grad is not null, name);
            Assert.True(p.grad!.isfinite().all().item<bool>(), name);
            Assert.True(p.grad.abs().sum().item<double>() > 0, name);
        }
    }

    /// <summary>The parameter names and shapes TRELLIS's SLatFlowModel has for a config (written from its source).</summary>
    private static List<(string Name, long[] Shape)> ExpectedFlowParams(long res, long cin, long cout, long c, long cc, int blocks, long heads,
        double mlp, int nres, long[] io, bool qkRms)
    {
        var list = new List<(string, long[])>();
        void Lin(string n, long i, long o) { list.Add((n + ".weight", new[] { o, i })); list.Add((n + ".bias", new[] { o })); }
        void Res(string n, long ci, long co)
        {
            list.Add((n + ".norm1.weight", new[] { ci })); list.Add((n + ".norm1.bias", new[] { ci }));
            list.Add((n + ".conv1.conv.weight", new[] { co, 3, 3, 3, ci })); list.Add((n + ".conv1.conv.bias", new[] { co }));
            list.Add((n + ".conv2.conv.weight", new[] { co, 3, 3, 3, co })); list.Add((n + ".conv2.conv.bias", new[] { co }));
            Lin(n + ".emb_layers.1", c, 2 * co);
            if (ci != co) Lin(n + ".skip_connection", ci, co);
        }
        Lin("t_embedder.mlp.0", 256, c);
        Lin("t_embedder.mlp.2", c, c);
        Lin("input_layer", cin, io[0]);
        int k = 0;
        for (int s = 0; s < io.Length; s++)
        {
            long next = s + 1 < io.Length ? io[s + 1] : c;
            for (int r = 0; r < nres - 1; r++) Res($"input_blocks.{k++}", io[s], io[s]);
            Res($"input_blocks.{k++}", io[s], next);
        }
        long hidden = (long)(c * mlp);
        for (int b = 0; b < blocks; b++)
        {
            var n = $"blocks.{b}";
            Lin(n + ".adaLN_modulation.1", c, 6 * c);
            list.Add((n + ".norm2.weight", new[] { c })); list.Add((n + ".norm2.bias", new[] { c }));
            Lin(n + ".self_attn.to_qkv", c, 3 * c);
            if (qkRms)
            {
                list.Add((n + ".self_attn.q_rms_norm.gamma", new[] { heads, c / heads }));
                list.Add((n + ".self_attn.k_rms_norm.gamma", new[] { heads, c / heads }));
            }
            Lin(n + ".self_attn.to_out", c, c);
            Lin(n + ".cross_attn.to_q", c, c);
            Lin(n + ".cross_attn.to_kv", cc, 2 * c);
            Lin(n + ".cross_attn.to_out", c, c);
            Lin(n + ".mlp.mlp.0", c, hidden);
            Lin(n + ".mlp.mlp.2", hidden, c);
        }
        k = 0;
        for (int s = io.Length - 1; s >= 0; s--)
        {
            long prev = s == io.Length - 1 ? c : io[s + 1];
            Res($"out_blocks.{k++}", 2 * prev, io[s]);
            for (int r = 0; r < nres - 1; r++) Res($"out_blocks.{k++}", 2 * io[s], io[s]);
        }
        Lin("out_layer", io[0], cout);
        return list;
    }

    private static void AssertSameParams(List<(string Name, long[] Shape)> expected, nn.Module model)
    {
        var sd = model.state_dict();
        Assert.Equal(expected.Select(e => e.Name).OrderBy(n => n, StringComparer.Ordinal), sd.Keys.OrderBy(n => n, StringComparer.Ordinal));
        foreach (var (name, shape) in expected) Assert.True(shape.SequenceEqual(sd[name].shape), $"{name}: [{string.Join(", ", sd[name].shape)}] vs [{string.Join(", ", shape)}]");
    }

    [Fact]
    public void ExpectedNameGeneratorReproducesTheGoldenManifest()
    {
        using var c = Case("slat_flow");
        var expected = ExpectedFlowParams(16, 8, 8, 64, 32, 2, 4, 4, 1, new long[] { 8 }, true);
        Assert.Equal(c.Role("model").Select(n => n["model.".Length..]).OrderBy(n => n, StringComparer.Ordinal),
            expected.Select(e => e.Name).OrderBy(n => n, StringComparer.Ordinal));
        foreach (var (name, shape) in expected) Assert.Equal(shape, c["model." + name].shape);
    }

    /// <summary>The released L config (slat_flow_img_dit_L_64l8p2_fp16) builds on the meta device with TRELLIS's names and count.</summary>
    [Fact]
    public void LargeReleasedConfigBuildsWithTrellisNamesAndCount()
    {
        const string json = "{\"name\": \"SLatFlowModel\", \"args\": {\"resolution\": 64, \"in_channels\": 8, \"out_channels\": 8, \"model_channels\": 1024, \"cond_channels\": 1024, \"num_blocks\": 24, \"num_heads\": 16, \"mlp_ratio\": 4, \"patch_size\": 2, \"num_io_res_blocks\": 2, \"io_block_channels\": [128], \"pe_mode\": \"ape\", \"qk_rms_norm\": true, \"use_fp16\": true}}";
        using var doc = JsonDocument.Parse(json);
        using var scope = torch.NewDisposeScope();
        var model = TrellisCheckpoint.Build<SLatFlowModel>(TrellisModelConfig.FromJson(doc.RootElement), ScalarType.Float16, torch.META);
        Assert.True(model.parameters().All(p => p.is_meta && p.dtype == ScalarType.Float16));
        AssertSameParams(ExpectedFlowParams(64, 8, 8, 1024, 1024, 24, 16, 4, 2, new long[] { 128 }, true), model);

        // The count, written out term by term from the architecture.
        const long C = 1024, Cc = 1024, K = 27;
        long tEmb = 256 * C + C + C * C + C;
        long inLayer = 8 * 128 + 128;
        long res128 = 2 * 128 + (K * 128 * 128 + 128) * 2 + (C * 256 + 256);
        long resDown = 2 * 128 + (K * 128 * C + C) + (K * C * C + C) + (C * 2 * C + 2 * C) + (128 * C + C);
        long block = (C * 6 * C + 6 * C) + 2 * C + (C * 3 * C + 3 * C) + 2 * C + (C * C + C)
                     + (C * C + C) + (Cc * 2 * C + 2 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C);
        long resUp = 2 * 2 * C + (K * 2 * C * 128 + 128) + (K * 128 * 128 + 128) + (C * 256 + 256) + (2 * C * 128 + 128);
        long resOut = 2 * 256 + (K * 256 * 128 + 128) + (K * 128 * 128 + 128) + (C * 256 + 256) + (256 * 128 + 128);
        long outLayer = 128 * 8 + 8;
        long expectedCount = tEmb + inLayer + res128 + resDown + 24 * block + resUp + resOut + outLayer;
        long count = model.parameters().Sum(p => p.numel());
        Assert.Equal(expectedCount, count);
        Assert.InRange(count, 595_000_000, 605_000_000); // 1.2 GB in fp16, the size of the released safetensors file
    }

    /// <summary>Float32 (fused attention path) and a float16 torso (TRELLIS's convert_to_fp16) stay close to the float64 reference.</summary>
    [Fact]
    public void LowerPrecisionRunsFollowTheReference()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatFlowModel>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float32);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        var x = new SparseTensor(c["in.feats"].to(ScalarType.Float32), c["in.coords"], 16);
        var y = model.forward(x, c["in.t"].to(ScalarType.Float32), c["in.cond"].to(ScalarType.Float32));
        Assert.Equal(ScalarType.Float32, y.Dtype);
        double rel32 = SparseTestData.MaxRel(c["out.feats"], y.Feats);
        Assert.True(rel32 < 1e-4, $"float32 rel {rel32}");

        model.SetTorsoDType(ScalarType.Float16);
        Assert.Equal(ScalarType.Float16, model.TorsoDType);
        Assert.Equal(ScalarType.Float32, model.named_parameters().First(p => p.name == "blocks.0.norm2.weight").parameter.dtype);
        var y16 = model.forward(x, c["in.t"].to(ScalarType.Float32), c["in.cond"].to(ScalarType.Float32));
        Assert.Equal(ScalarType.Float32, y16.Dtype);
        // Bar derived from fp16's 11 significant bits and the number of fp16 layers (ReducedPrecision): 6·u·L.
        int layers = ReducedPrecision.RoundedLayers(model, ScalarType.Float16);
        double rel16 = ReducedPrecision.RelativeError(c["out.feats"], y16.Feats);
        Assert.True(rel16 < ReducedPrecision.Tolerance(ScalarType.Float16, layers) && rel16 > ReducedPrecision.UnitRoundoff(ScalarType.Float32),
            $"float16 torso rel {rel16} over {layers} layers");
    }

    /// <summary>Two IO stages (patch 4): the down-sampling chain and its up-sampling maps restore any row order.</summary>
    [Fact]
    public void TwoStageFlowRestoresRowOrder()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var rng = new Generator(21);
        var cfg = new SLatFlowConfig
        {
            Resolution = 12, InChannels = 4, OutChannels = 3, ModelChannels = 24, CondChannels = 6, NumBlocks = 1, NumHeads = 2,
            PatchSize = 4, NumIoResBlocks = 2, IoBlockChannels = new long[] { 8, 16 }, QkRmsNorm = true,
        };
        var model = new SLatFlowModel(cfg, ScalarType.Float64);
        foreach (var p in model.parameters()) p.normal_(0, 0.2, generator: rng); // TRELLIS zero-inits the output layers; make every path visible
        var coords = SparseTestData.RandomCoords(12, new[] { 150, 90 }, 31);
        var feats = torch.randn(coords.shape[0], 4, dtype: ScalarType.Float64, generator: rng);
        var t = torch.tensor(new[] { 500.0, 20.0 }, dtype: ScalarType.Float64);
        var cond = torch.randn(2, 5, 6, dtype: ScalarType.Float64, generator: rng);
        var y = model.forward(new SparseTensor(feats, coords, 12), t, cond).Feats;
        var perm = PermuteWithinSamples(coords, 3);
        var yp = model.forward(new SparseTensor(feats.index_select(0, perm), coords.index_select(0, perm), 12), t, cond).Feats;
        Assert.True(SparseTestData.MaxRel(y.index_select(0, perm), yp) < 1e-12);
        Assert.Equal(new long[] { coords.shape[0], 3 }, y.shape);
        // sample 1 does not depend on sample 0's voxels or condition
        var cond2 = cond.clone();
        cond2[0] = torch.randn(5, 6, dtype: ScalarType.Float64, generator: rng);
        var y2 = model.forward(new SparseTensor(feats, coords, 12), t, cond2).Feats;
        Assert.True(y2[150..].eq(y[150..]).all().item<bool>());
        Assert.False(y2[..150].eq(y[..150]).all().item<bool>());
    }

    [Fact]
    public void ElasticFlowIsTheSameNetwork()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        var elastic = new ElasticSLatFlowModel(SLatFlowConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args), ScalarType.Float64);
        Assert.IsType<ElasticSLatFlowModel>(elastic);
        SparseGolden.LoadExact(elastic, c.WithPrefix("model."), c.Name);
        Assert.Equal(2, SLatFlowConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args).NumBlocks);

        // Behaviour: TRELLIS's elastic variant computes exactly SLatFlowModel's forward (it only changes gradient
        // checkpointing in training): same outputs, same state-dict names, its own class name in saved configs.
        using var _ = torch.no_grad();
        var plain = new SLatFlowModel(SLatFlowConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args), ScalarType.Float64);
        SparseGolden.LoadExact(plain, c.WithPrefix("model."), c.Name);
        var x = new SparseTensor(c["in.feats"], c["in.coords"], 16);
        var ye = elastic.forward(x, c["in.t"], c["in.cond"]).Feats;
        var yp = plain.forward(x, c["in.t"], c["in.cond"]).Feats;
        Assert.True(ye.eq(yp).all().item<bool>());
        Assert.True(SparseTestData.MaxRel(c["out.feats"], ye) < 1e-12);
        Assert.Equal("ElasticSLatFlowModel", elastic.TrellisClassName);
        Assert.Equal(plain.state_dict().Keys.OrderBy(k => k), elastic.state_dict().Keys.OrderBy(k => k));
    }
}
