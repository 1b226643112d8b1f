using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>A controller that always answers the same ratio and keeps what the networks report.</summary>
internal sealed class FixedRatioController(double ratio) : MemoryController
{
    public List<(long Size, double Ratio)> Reports { get; } = new();

    public override double GetMemRatio(long inputSize) => ratio;

    public override IDisposable Record()
    {
        BeginRun();
        return new Scope(this);
    }

    private sealed class Scope(FixedRatioController owner) : IDisposable
    {
        public void Dispose()
        {
            if (owner.RunInputSize is long n)
                foreach (var r in owner.RunMemRatios) owner.Reports.Add((n, r));
        }
    }
}

/// <summary>
/// TRELLIS's elastic memory on the sparse networks: gradients with checkpointed blocks equal the plain ones bit for bit
/// (float64), the blocks follow <c>with_mem_ratio</c>'s rule, and the Elastic classes build from TRELLIS's configs.
/// </summary>
public class ElasticCheckpointTests
{
    private static SparseTensor Input(int resolution, int[] voxels, long channels, int seed)
    {
        var coords = SparseTestData.RandomCoords(resolution, voxels, seed);
        var feats = torch.randn(coords.shape[0], channels, dtype: ScalarType.Float64, generator: new Generator((ulong)seed));
        return new SparseTensor(feats, coords, resolution);
    }

    /// <summary>The gradients of every parameter and of the input features for <c>sum(w · f(x))</c>.</summary>
    private static Dictionary<string, Tensor> Gradients(nn.Module model, SparseTensor x, Func<SparseTensor, Tensor> f, MemoryController? controller)
    {
        ((IElasticModule)model).RegisterMemoryController(controller);
        model.train();
        foreach (var p in model.parameters()) p.grad = null;
        var feats = x.Feats.clone().requires_grad_(true);
        Dictionary<string, Tensor> result;
        using (controller?.Record())
        {
            var y = f(x.ReplaceFeats(feats));
            var w = torch.randn(y.shape, ScalarType.Float64, generator: new Generator(77));
            (y * w).sum().backward();
            result = model.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!.clone());
            result["input"] = feats.grad!.clone();
        }
        ((IElasticModule)model).RegisterMemoryController(null);
        return result;
    }

    private static void AssertIdentical(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> actual, string what)
    {
        Assert.Equal(expected.Keys.OrderBy(k => k), actual.Keys.OrderBy(k => k));
        foreach (var (name, e) in expected)
            Assert.True(e.shape.SequenceEqual(actual[name].shape) && e.equal(actual[name]).all().item<bool>(), $"{what}: gradient of {name} differs by {(e - actual[name]).abs().max().item<double>()}");
    }

    [Fact]
    public void FlowGradientsAreBitIdenticalWhateverTheRatio()
    {
        using var scope = torch.NewDisposeScope();
        var cfg = new SLatFlowConfig
        {
            Resolution = 12, InChannels = 4, OutChannels = 4, ModelChannels = 24, CondChannels = 6, NumBlocks = 4, NumHeads = 2,
            PatchSize = 2, NumIoResBlocks = 1, IoBlockChannels = new long[] { 8 }, QkRmsNorm = true,
        };
        var model = RandomTinyTrellis.Randomize(new ElasticSLatFlowModel(cfg, ScalarType.Float64), 31);
        var x = Input(12, new[] { 70, 45 }, 4, 32);
        var t = torch.tensor(new[] { 700.0, 150.0 }, ScalarType.Float64);
        var cond = torch.randn(new long[] { 2, 5, 6 }, ScalarType.Float64, generator: new Generator(33)).requires_grad_(false);
        Tensor F(SparseTensor h) => model.forward(h, t, cond).Feats;

        var plain = Gradients(model, x, F, null);
        Assert.Equal(model.parameters().Count(), plain.Count - 1);
        // TRELLIS's rule for N = 4 blocks: ratio 1 → none; 0.7 → ceil(1.2) + 1 = 3 blocks (ratio used 1 − 2/4);
        // 0.9 → ceil(0.4) + 1 = 2 (1 − 1/4); 0 → min(5, 4) = 4 (1 − 3/4).
        foreach (var (ratio, exact) in new[] { (1.0, 1.0), (0.7, 0.5), (0.9, 0.75), (0.0, 0.25) })
        {
            var c = new FixedRatioController(ratio);
            AssertIdentical(plain, Gradients(model, x, F, c), $"ratio {ratio}");
            Assert.Equal(new[] { (x.Feats.shape[0], exact) }, c.Reports);
        }

        // Not training, or no gradients: the controller is not asked and nothing is reported.
        var idle = new FixedRatioController(0);
        model.RegisterMemoryController(idle);
        model.eval();
        using (idle.Record()) F(x).Dispose();
        model.train();
        using (idle.Record())
        using (torch.no_grad())
            F(x).Dispose();
        Assert.Empty(idle.Reports);
    }

    [Fact]
    public void GaussianDecoderGradientsAreBitIdenticalWithCheckpointedBlocks()
    {
        using var scope = torch.NewDisposeScope();
        var args = JsonNode.Parse(RandomTinyTrellis.Configs["slat_decoder_gs"])!["args"]!.AsObject();
        args["num_blocks"] = 3;
        var model = RandomTinyTrellis.Randomize(
            TrellisCheckpoint.Build<ElasticSLatGaussianDecoder>(new TrellisModelConfig("ElasticSLatGaussianDecoder", args), ScalarType.Float64), 41);
        var x = Input(16, new[] { 60, 35 }, 8, 42);
        Tensor F(SparseTensor h) => model.ForwardFeatures(h).Feats;

        var plain = Gradients(model, x, F, null);
        foreach (var (ratio, exact) in new[] { (0.5, 1 - 2 / 3.0), (0.0, 1 - 2 / 3.0), (0.95, 1 - 1 / 3.0) })
        {
            var c = new FixedRatioController(ratio);
            AssertIdentical(plain, Gradients(model, x, F, c), $"ratio {ratio}");
            Assert.Equal(new[] { (x.Feats.shape[0], exact) }, c.Reports);
        }
    }

    [Fact]
    public void EncoderGradientsAreBitIdenticalWithCheckpointedBlocks()
    {
        using var scope = torch.NewDisposeScope();
        var args = JsonNode.Parse("""{"resolution": 16, "in_channels": 12, "model_channels": 32, "latent_channels": 8, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4}""")!.AsObject();
        var model = RandomTinyTrellis.Randomize(
            TrellisCheckpoint.Build<ElasticSLatEncoder>(new TrellisModelConfig("ElasticSLatEncoder", args), ScalarType.Float64), 45);
        var x = Input(16, new[] { 50, 65 }, 12, 46);
        Tensor F(SparseTensor h) => torch.cat(new[] { model.Encode(h).Mean, model.Encode(h).LogVar }, 1);

        var plain = Gradients(model, x, F, null);
        // N = 2: ratio 0.6 → min(ceil(0.8) + 1, 2) = 2 blocks, ratio used 1 − 1/2 (two forwards of the same input).
        var c = new FixedRatioController(0.6);
        AssertIdentical(plain, Gradients(model, x, F, c), "encoder");
        Assert.Equal(new[] { (x.Feats.shape[0], 0.5), (x.Feats.shape[0], 0.5) }, c.Reports);
    }

    [Fact]
    public void UseCheckpointInTheConfigChecksEveryBlockWithTheSameGradients()
    {
        using var scope = torch.NewDisposeScope();
        var json = JsonNode.Parse(RandomTinyTrellis.Configs["slat_flow_model"])!["args"]!.AsObject();
        json["num_blocks"] = 2;
        var plainNet = RandomTinyTrellis.Randomize(TrellisCheckpoint.Build<ElasticSLatFlowModel>(new TrellisModelConfig("ElasticSLatFlowModel", json), ScalarType.Float64), 51);
        json["use_checkpoint"] = true;
        var ckptNet = TrellisCheckpoint.Build<ElasticSLatFlowModel>(new TrellisModelConfig("ElasticSLatFlowModel", json), ScalarType.Float64);
        ckptNet.load_state_dict(plainNet.state_dict());
        var x = Input(16, new[] { 40, 30 }, 8, 52);
        var t = torch.tensor(new[] { 300.0, 900.0 }, ScalarType.Float64);
        var cond = torch.randn(new long[] { 2, 6, 16 }, ScalarType.Float64, generator: new Generator(53));
        AssertIdentical(Gradients(plainNet, x, h => plainNet.forward(h, t, cond).Feats, null),
            Gradients(ckptNet, x, h => ckptNet.forward(h, t, cond).Feats, null), "use_checkpoint");
    }

    [Fact]
    public void TrellisElasticConfigsBuildAndRoundTrip()
    {
        // The model sections of TRELLIS's configs/vae/slat_vae_enc_dec_gs_swin8_B_64l8_fp16.json and
        // slat_vae_dec_mesh_swin8_B_64l8_fp16.json, and MDT-dist's slat_flow_img_dit_L_64l8p2_fp16.json denoiser.
        var configs = new Dictionary<string, (string Json, Type Type)>
        {
            ["ElasticSLatEncoder"] = ("""{"resolution": 64, "in_channels": 1024, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true}""", typeof(ElasticSLatEncoder)),
            ["ElasticSLatGaussianDecoder"] = ("""{"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}""", typeof(ElasticSLatGaussianDecoder)),
            ["ElasticSLatMeshDecoder"] = ("""{"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true, "representation_config": {"use_color": true}}""", typeof(ElasticSLatMeshDecoder)),
            ["ElasticSLatFlowModel"] = ("""{"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [128], "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true}""", typeof(ElasticSLatFlowModel)),
        };
        foreach (var (name, (json, type)) in configs)
        {
            // Full size on the meta device (shapes only): the class TRELLIS names, an IElasticModule, the same tensors as the plain class.
            using var meta = TrellisCheckpoint.Build(new TrellisModelConfig(name, JsonNode.Parse(json)!.AsObject()), device: torch.META, maxElements: 2_000_000_000);
            Assert.IsType(type, meta);
            Assert.IsAssignableFrom<IElasticModule>(meta);
            Assert.Equal(name, ((ITrellisModel)meta).TrellisClassName);
            using var plain = TrellisCheckpoint.Build(new TrellisModelConfig(name["Elastic".Length..], JsonNode.Parse(json)!.AsObject()), device: torch.META, maxElements: 2_000_000_000);
            Assert.Equal(plain.state_dict().Keys.OrderBy(k => k), meta.state_dict().Keys.OrderBy(k => k));
        }

        // A tiny one through the checkpoint files: saved under its Elastic name, loaded back as the Elastic class.
        var dir = Directory.CreateTempSubdirectory("mdtdist-elastic-").FullName;
        try
        {
            var args = JsonNode.Parse(RandomTinyTrellis.Configs["slat_decoder_gs"])!["args"]!.AsObject();
            using var dec = RandomTinyTrellis.Randomize(TrellisCheckpoint.Build<ElasticSLatGaussianDecoder>(new TrellisModelConfig("ElasticSLatGaussianDecoder", args)), 3);
            TrellisCheckpoint.Save(dec, Path.Combine(dir, "dec"));
            Assert.Equal("ElasticSLatGaussianDecoder", TrellisCheckpoint.ReadConfig(Path.Combine(dir, "dec")).Name);
            using var back = TrellisCheckpoint.Load(Path.Combine(dir, "dec"));
            Assert.IsType<ElasticSLatGaussianDecoder>(back);
            Assert.IsAssignableFrom<SLatGaussianDecoder>(back);
        }
        finally { Directory.Delete(dir, true); }
    }
}

/// <summary>
/// The peak memory of a training step of an <see cref="ElasticSLatFlowModel"/> falls as the budget of its
/// <see cref="LinearMemoryController"/> shrinks, with identical gradients. Each budget runs in its own child process
/// (<c>tests/MdtDist.Trellis.ElasticProbe</c>) and is measured there by the controller's own meter, the peak RSS.
/// </summary>
/// <remarks>
/// Why this measure is deterministic: the child runs one libtorch thread on a fixed seeded batch, so its sequence of
/// allocations is fixed; with <c>MALLOC_MMAP_THRESHOLD_</c> fixed, glibc serves every tensor above 128 KiB from its own
/// mapping and returns it on free, so the resident set follows the live tensors, and the peak does not depend on load,
/// timing or other processes. The warm-up step before the measured one makes lazy allocations (JIT, optimizer state,
/// kernels' scratch) happen outside the measurement. What is left is the .NET runtime's own threads: repeated runs of one
/// budget agree to about 2 MiB, against differences of more than 60 MiB between the budgets tested (without the fixed
/// mmap threshold glibc keeps freed memory in its heap and the step's own peak all but vanishes from the RSS).
/// </remarks>
public class ElasticMemoryTests
{
    private sealed record Probe(double Ratio, int Checkpointed, long Peak, long Before, string Grads);

    private static Probe Run(double availableGiB)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "MdtDist.Trellis.ElasticProbe.dll"));
        // k = 1e-4 GiB per row at ratio 1, b = 0, target_ratio 1: the controller answers ratio = budget / (1e-4 · 2048 rows).
        foreach (var a in new[] { availableGiB.ToString("R", CultureInfo.InvariantCulture), "1e-4", "0" }) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        psi.Environment["MALLOC_MMAP_THRESHOLD_"] = "131072";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); throw new TimeoutException("the elastic probe did not finish in 5 minutes."); }
        Assert.True(p.ExitCode == 0, stdout.Result + stderr.Result);
        var o = JsonNode.Parse(stdout.Result.Trim().Split('\n')[^1])!.AsObject();
        return new Probe(o["mem_ratio"]!.GetValue<double>(), o["checkpointed"]!.GetValue<int>(), o["peak_bytes"]!.GetValue<long>(),
            o["rss_before"]!.GetValue<long>(), o["grad_sha256"]!.GetValue<string>());
    }

    [Fact]
    public void PeakMemoryOfATrainingStepFallsAsTheBudgetShrinks()
    {
        if (!OperatingSystem.IsLinux()) return;   // the peak RSS is read from /proc (elsewhere it cannot be reset)
        const double full = 1e-4 * 2048;
        // Requested ratios 1, 0.8 and 0.2 of the 6 blocks: TRELLIS's rule checkpoints 0, ceil(1.2)+1 = 3 and ceil(4.8)+1 = 6.
        var runs = new[] { 1.0, 0.8, 0.2 }.Select(r => Run(r * full)).ToArray();
        Assert.Equal(new[] { 0, 3, 6 }, runs.Select(r => r.Checkpointed));
        Assert.Equal(new[] { 1.0, 1 - 2 / 6.0, 1 - 5 / 6.0 }, runs.Select(r => r.Ratio));
        // Identical gradients (float32, bit for bit) whatever the budget.
        Assert.All(runs, r => Assert.Equal(runs[0].Grads, r.Grads));

        // The step's own memory (peak minus the resident set before it) falls with every block checkpointed. Derivation of
        // the margin: each checkpointed block drops its saved activations (~[N, C] × (attention + 4·C MLP) ≈ tens of MiB at
        // N = 2048, C = 64) and keeps only its input (0.5 MiB); the runtime's own noise (GC heap, JIT threads) is about 2 MiB. So every
        // additional checkpointed block must save at least 1/4 of the average saving per block between none and all.
        var step = runs.Select(r => r.Peak - r.Before).ToArray();
        double perBlock = (step[0] - step[2]) / 5.0;   // 6 checkpointed blocks keep 1 block's worth of recomputation live
        Assert.True(perBlock > 4 << 20, $"checkpointing all blocks saved only {(step[0] - step[2]) >> 20} MiB");
        Assert.True(step[0] - step[1] > 0.25 * perBlock * 2, $"3 checkpointed blocks: {step[1] >> 20} MiB vs {step[0] >> 20} MiB with none");
        Assert.True(step[1] - step[2] > 0.25 * perBlock * 3, $"6 checkpointed blocks: {step[2] >> 20} MiB vs {step[1] >> 20} MiB with 3");
    }
}
