using System.Text.Json.Nodes;
using BenchmarkDotNet.Attributes;
using MdtDist.Core.Flow;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Latency of TRELLIS's two flow stages under the 25-step teacher schedule of TRELLIS-image-large (Euler, CFG 5 on
/// t ∈ [0.5, 1], rescale 3: 44 network evaluations per stage) against MDT-dist student schedules of 1 and 2 Euler steps
/// (no CFG: 1 evaluation per step). Stage 1 runs the sparse-structure DiT on its 16³ latent (4096 tokens); stage 2 runs
/// the structured-latent flow on a fixed sphere shell of occupied voxels of the 64³ grid (14,648 voxels, a typical
/// object size) so that the work does not depend on random weights. Condition: 1374 tokens × 1024 (DINOv2 ViT-L/14-reg).
/// The networks have TRELLIS's architecture at a width a CPU can run (128 channels, 4 blocks); set
/// MDTDIST_BENCH_SCALE=L with a TorchSharp-cuda backend on a GPU machine for the released L configs (1024 channels,
/// 24 blocks). Decoders are not included: their cost does not depend on the schedule.
/// </summary>
[MemoryDiagnoser]
public class TrellisLatencyBenchmarks
{
    private IFlowModel _stage1 = null!;
    private IFlowModel _stage2 = null!;
    private Tensor _noise1 = null!;
    private Latent _noise2 = null!;
    private Tensor _cond = null!;
    private StageSampler _sampler = null!;

    /// <summary>The schedule of both stages.</summary>
    [Params("teacher-25", "student-2", "student-1")]
    public string Schedule { get; set; } = "teacher-25";

    private static JsonObject Args(string json) => JsonNode.Parse(json)!.AsObject();

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(0);
        bool large = Environment.GetEnvironmentVariable("MDTDIST_BENCH_SCALE") == "L";
        var device = large && torch.cuda.is_available() ? CUDA : CPU;
        string ch = large ? "1024" : "128", blocks = large ? "24" : "4", heads = large ? "16" : "4", io = large ? "128" : "32";
        var ss = (SparseStructureFlowModel)TrellisCheckpoint.Build(new TrellisModelConfig("SparseStructureFlowModel", Args(
            $$"""{"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": {{ch}}, "cond_channels": 1024, "num_blocks": {{blocks}}, "num_heads": {{heads}}, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}""")), ScalarType.Float32, device);
        var slat = (SLatFlowModel)TrellisCheckpoint.Build(new TrellisModelConfig("SLatFlowModel", Args(
            $$"""{"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": {{ch}}, "cond_channels": 1024, "num_blocks": {{blocks}}, "num_heads": {{heads}}, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [{{io}}], "pe_mode": "ape", "qk_rms_norm": true}""")), ScalarType.Float32, device);
        ss.eval();
        slat.eval();
        _sampler = Schedule switch
        {
            "teacher-25" => StageSampler.TrellisImageLarge,
            "student-2" => StageSampler.Student(2),
            _ => StageSampler.Student(1),
        };
        _stage1 = _sampler.Guide(new SparseStructureFlowAdapter(ss));
        _stage2 = _sampler.Guide(new SLatFlowAdapter(slat));
        var g = new Generator(1);
        _noise1 = torch.randn(new long[] { 1, 8, 16, 16, 16 }, generator: g).to(device);
        var coords = StructureShapes.Shell(25, thickness: 2).to(device);   // 23 ≤ r < 25
        _noise2 = new SparseTensor(torch.randn(new[] { coords.shape[0], 8L }, generator: g).to(device), coords, 64, 1).ToLatent();
        _cond = torch.randn(new long[] { 1, 1374, 1024 }, generator: g).to(device);
    }

    [Benchmark(Description = "stage 1: sparse-structure flow (16³ latent)")]
    public void Stage1()
    {
        using var r = _sampler.CreateSolver().Sample(_stage1, Latent.Dense(_noise1), _cond, _sampler.Grid());
    }

    [Benchmark(Description = "stage 2: structured-latent flow (14.6k voxels)")]
    public void Stage2()
    {
        using var r = _sampler.CreateSolver().Sample(_stage2, _noise2, _cond, _sampler.Grid());
    }
}
