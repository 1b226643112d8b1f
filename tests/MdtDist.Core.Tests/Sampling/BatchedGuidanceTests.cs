using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Sampling;

/// <summary>
/// <see cref="ClassifierFreeGuidance.BatchedPasses"/> on Core's layouts: one 2B call gives the two-call result.
/// Tolerance: the toy network does the same float64 arithmetic per sample in both paths; a GEMM whose blocking depends
/// on the row count may sum its K = 16 products in another order, ≤ K·ε·Σ|terms| ≈ 16·1.1e-16·O(10) ≈ 2e-14 per layer,
/// so 1e-12 relative (max|diff| / max(1, max|ref|)) bounds it with margin; we expect ~1e-16.
/// </summary>
public class BatchedGuidanceTests
{
    private const double Tolerance = 1e-12;

    /// <summary>A two-layer MLP on [x, t, mean(condition)] per row: nonlinear in all three, counts its calls.</summary>
    private sealed class Toy : IFlowModel
    {
        private readonly Tensor _w1, _w2;
        public Toy(int channels)
        {
            var g = new Generator(81);
            _w1 = torch.randn(new long[] { channels + 2, 16 }, dtype: ScalarType.Float64, generator: g);
            _w2 = torch.randn(new long[] { 16, channels }, dtype: ScalarType.Float64, generator: g);
        }

        public int Calls { get; private set; }
        public List<long> Batches { get; } = new();

        public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
        {
            Calls++;
            Batches.Add(x.BatchSize);
            var c = condition!.expand(x.BatchSize, -1, -1).mean(new long[] { 1, 2 });
            var rows = x.Data.reshape(x.Data.shape[0], -1, x.Data.shape[^1]);   // dense [B, ..., C] or rows [N, C]
            if (x.Layout is RowLayout) rows = x.Data.unsqueeze(1);
            var tr = x.PerSample(t).reshape(rows.shape[0], 1, 1).expand(-1, rows.shape[1], 1);
            var cr = x.PerSample(c).reshape(rows.shape[0], 1, 1).expand(-1, rows.shape[1], 1);
            var h = torch.tanh(torch.cat(new[] { rows, tr, cr }, 2).matmul(_w1));
            return h.matmul(_w2).reshape(x.Data.shape);
        }
    }

    private static double RelErr(Tensor actual, Tensor expected) =>
        (actual - expected).abs().max().item<double>() / Math.Max(1.0, expected.abs().max().item<double>());

    [Theory]
    [InlineData(0.7, 0.9, false)]    // inside the interval
    [InlineData(0.1, 0.2, false)]    // outside: a single conditional call
    [InlineData(0.1, 0.9, false)]    // mixed-t batch
    [InlineData(0.6, 0.8, true)]     // explicit negative condition
    public void DenseBatchedEqualsTwoCalls(double t0, double t1, bool explicitNegative)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(82);
        var x = Latent.Dense(torch.randn(new long[] { 2, 3, 4 }, dtype: ScalarType.Float64, generator: g));
        var cond = torch.randn(new long[] { 2, 5, 6 }, dtype: ScalarType.Float64, generator: g);
        var neg = explicitNegative ? torch.randn(new long[] { 1, 5, 6 }, dtype: ScalarType.Float64, generator: g) : null;
        var t = torch.tensor(new[] { t0, t1 }, dtype: ScalarType.Float64);
        var toy = new Toy(4);
        var plain = new ClassifierFreeGuidance(toy, 2.5, neg, 0.5, 1.0).Velocity(x, t, cond);
        int plainCalls = toy.Calls;
        var batchedCfg = new ClassifierFreeGuidance(toy, 2.5, neg, 0.5, 1.0) { BatchedPasses = true };
        var batched = batchedCfg.Velocity(x, t, cond);
        bool guided = t0 >= 0.5 || t1 >= 0.5;
        Assert.Equal(guided ? 2 : 1, plainCalls);
        Assert.Equal(plainCalls + 1, toy.Calls);              // one call in batched mode
        if (guided) Assert.Equal(4, toy.Batches[^1]);         // on 2B samples
        Assert.True(RelErr(batched, plain) <= Tolerance, $"relative error {RelErr(batched, plain):E3}");
        Assert.Equal(2, batchedCfg.EvaluationsAt(0.7));       // still two network evaluations per guided step
    }

    [Fact]
    public void RowLayoutBatchedEqualsTwoCallsAndOffsetsTheSecondCopy()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(83);
        var layout = new RowLayout(torch.tensor(new long[] { 0, 0, 0, 1, 1 }), 2);
        var x = new Latent(torch.randn(new long[] { 5, 4 }, dtype: ScalarType.Float64, generator: g), layout);
        var twice = Assert.IsType<RowLayout>(layout.RepeatBatch(2));
        Assert.Equal(new long[] { 0, 0, 0, 1, 1, 2, 2, 2, 3, 3 }, twice.SampleIndex.data<long>().ToArray());
        var cond = torch.randn(new long[] { 2, 5, 6 }, dtype: ScalarType.Float64, generator: g);
        var t = torch.tensor(new[] { 0.3, 0.8 }, dtype: ScalarType.Float64);
        var toy = new Toy(4);
        var plain = new ClassifierFreeGuidance(toy, 2.5, null, 0.5, 1.0).Velocity(x, t, cond);
        var batched = new ClassifierFreeGuidance(toy, 2.5, null, 0.5, 1.0) { BatchedPasses = true }.Velocity(x, t, cond);
        Assert.True(RelErr(batched, plain) <= Tolerance, $"relative error {RelErr(batched, plain):E3}");
        Assert.Throws<ArgumentException>(() => x.SplitRepeated(batched, 2));
        Assert.Throws<ArgumentException>(() => layout.RepeatBatch(0));
    }
}
