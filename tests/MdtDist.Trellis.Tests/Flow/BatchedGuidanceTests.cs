using System.Text.Json.Nodes;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Flow;

/// <summary>
/// <see cref="ClassifierFreeGuidance.BatchedPasses"/> through the TRELLIS adapters: one forward on 2B samples gives the
/// two-call result. Tolerance: both paths do the same float64 arithmetic per sample; only libtorch kernels whose
/// blocking depends on the batch size (GEMM over B·L rows, the sparse convolutions' gathers) may add terms in another
/// order, each dot product of length K ≤ 64 then differing by ≤ K·ε·Σ|terms| ≈ 64·1.1e-16·O(10) ≈ 1e-13 after a few
/// layers of O(1) gain; we allow 1e-12 relative (max|diff| / max(1, max|ref|)) and expect ~1e-15.
/// </summary>
public class BatchedGuidanceTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const double Tolerance = 1e-12;

    private static T Build<T>(string json, long seed) where T : nn.Module
    {
        var node = JsonNode.Parse(json)!.AsObject();
        var model = (T)TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()), ScalarType.Float64);
        return RandomTinyTrellis.Randomize(model, seed);
    }

    private static SparseStructureFlowAdapter Stage1() => new(Build<SparseStructureFlowModel>(
        """{"name": "SparseStructureFlowModel", "args": {"resolution": 4, "in_channels": 2, "out_channels": 2, "model_channels": 16, "cond_channels": 6, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}}""", 11));

    private static SLatFlowAdapter Stage2() => new(Build<SLatFlowModel>(
        """{"name": "SLatFlowModel", "args": {"resolution": 8, "in_channels": 2, "out_channels": 2, "model_channels": 16, "cond_channels": 6, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}}""", 12));

    private static Tensor Cond(long batch, ulong seed) =>
        torch.randn(new long[] { batch, 5, 6 }, dtype: ScalarType.Float64, generator: new Generator(seed));

    private static Latent SparseLatent(ulong seed)
    {
        // two samples with different voxel counts, so the second copy's offsets matter
        var coords = torch.tensor(new int[] { 0, 0, 0, 0, 0, 1, 2, 3, 0, 7, 7, 7, 0, 1, 1, 1, 1, 2, 2, 2, 1, 5, 6, 7, 1, 0, 0, 1 }, new long[] { 7, 4 });
        var feats = torch.randn(new long[] { 7, 2 }, dtype: ScalarType.Float64, generator: new Generator(seed));
        return new SparseTensor(feats, coords, resolution: 8).ToLatent();
    }

    private static double RelErr(Tensor actual, Tensor expected)
    {
        using var d = (actual - expected).abs().max();
        using var m = expected.abs().max();
        return d.item<double>() / Math.Max(1.0, m.item<double>());
    }

    public static TheoryData<double, double, double?> Times => new()
    {
        { 0.7, 0.7, null },   // inside the interval, both samples
        { 0.2, 0.3, null },   // outside: one conditional call, batched mode not used
        { 0.2, 0.8, null },   // mixed-t batch: one sample inside, one outside
        { 0.6, 0.9, 1.0 },    // explicit negative condition
    };

    private void AssertBatchedEqualsUnbatched(IFlowModel model, Latent x, double t0, double t1, double? negative, Tensor cond)
    {
        using var t = torch.tensor(new[] { t0, t1 }, dtype: ScalarType.Float64);
        using var neg = negative is { } n ? torch.full_like(cond, n) : null;
        var plain = new ClassifierFreeGuidance(model, 3.0, neg, intervalStart: 0.5, intervalEnd: 1.0);
        var batched = new ClassifierFreeGuidance(model, 3.0, neg, intervalStart: 0.5, intervalEnd: 1.0) { BatchedPasses = true };
        using var noGrad = torch.no_grad();
        using var expected = plain.Velocity(x, t, cond);
        using var actual = batched.Velocity(x, t, cond);
        using var again = batched.Velocity(x, t, cond);   // second step: cached paired condition and K/V
        Assert.Equal(expected.shape, actual.shape);
        double err = Math.Max(RelErr(actual, expected), RelErr(again, expected));
        output.WriteLine($"t = ({t0}, {t1}): batched vs unbatched relative error {err:E3}");
        Assert.True(err <= Tolerance, $"batched vs unbatched relative error {err:E3} > {Tolerance:E1}");
        Assert.True(TinyMaxAbs(expected) > 1e-3, "the velocity is not trivially zero");
        Assert.Equal(plain.EvaluationsAt(t0) + plain.EvaluationsAt(t1), batched.EvaluationsAt(t0) + batched.EvaluationsAt(t1));
        Assert.Equal(2, batched.EvaluationsAt(0.7));
    }

    private static double TinyMaxAbs(Tensor v)
    {
        using var m = v.abs().max();
        return m.item<double>();
    }

    [Theory]
    [MemberData(nameof(Times))]
    public void Stage1BatchedEqualsTwoPasses(double t0, double t1, double? negative)
    {
        var model = Stage1();
        using var x = torch.randn(new long[] { 2, 2, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(21));
        using var cond = Cond(2, 22);
        AssertBatchedEqualsUnbatched(model, Latent.Dense(x), t0, t1, negative, cond);
        using var shared = Cond(1, 23);   // a batch-1 condition shared by both samples
        AssertBatchedEqualsUnbatched(model, Latent.Dense(x), t0, t1, negative, shared);
        model.Network.Dispose();
    }

    [Theory]
    [MemberData(nameof(Times))]
    public void Stage2BatchedEqualsTwoPassesOnSparseRows(double t0, double t1, double? negative)
    {
        var model = Stage2();
        var x = SparseLatent(31);
        using var cond = Cond(2, 32);
        AssertBatchedEqualsUnbatched(model, x, t0, t1, negative, cond);
        model.Network.Dispose();
    }

    [Fact]
    public void SparseLayoutRepeatOffsetsTheSecondCopyAndIsKept()
    {
        var x = SparseLatent(41);
        var layout = (SparseLatentLayout)x.Layout;
        var twice = Assert.IsType<SparseLatentLayout>(layout.RepeatBatch(2));
        Assert.Same(twice, layout.RepeatBatch(2));   // built once: neighbour maps stay cached across steps
        Assert.Equal(4, twice.BatchSize);
        Assert.Equal(new long[] { 4, 3, 4, 3 }, twice.RowCounts);
        using var expected = torch.cat(new[] { layout.Coordinates.Coords, layout.Coordinates.Coords + torch.tensor(new int[] { 2, 0, 0, 0 }) }, 0);
        Assert.Equal(expected.shape, twice.Coordinates.Coords.shape);
        Assert.True(torch.equal(twice.Coordinates.Coords, expected.to(twice.Coordinates.Coords.dtype)).all().item<bool>());
        var x2 = x.RepeatBatch(2);
        var halves = x.SplitRepeated(x2.Data, 2);
        Assert.Equal(x.Data.shape, halves[1].shape);
        Assert.True(torch.equal(halves[0], x.Data).all().item<bool>());
        Assert.True(torch.equal(halves[1], x.Data).all().item<bool>());
    }
}
