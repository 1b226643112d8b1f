using MdtDist.TestSupport;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

/// <summary>
/// The CPU paths of the decoders' swin trunk: packed-qkv windowed attention with windows grouped by length, the
/// bfloat16 layer norm without a float32 round trip (CPU), and the row-chunked in-place MLP used without autograd.
/// </summary>
[Collection("SparseStatics")]
public class SwinTrunkTests
{
    /// <summary>Reference: dense N×N attention (float64) with −inf between rows of different windows.</summary>
    private static Tensor BlockDiagonalReference(Tensor qkv, Tensor coords, int w, int shift)
    {
        var c = coords.to(ScalarType.Int64).data<long>().ToArray();
        long n = c.Length / 4;
        var g = new long[n];
        for (int i = 0; i < n; i++)
            g[i] = ((c[i * 4] * 100 + (c[i * 4 + 1] + shift) / w) * 100 + (c[i * 4 + 2] + shift) / w) * 100 + (c[i * 4 + 3] + shift) / w;
        var gt = torch.tensor(g);
        var same = gt.unsqueeze(1).eq(gt.unsqueeze(0));
        var q = qkv.select(1, 0).permute(1, 0, 2);
        var k = qkv.select(1, 1).permute(1, 0, 2);
        var v = qkv.select(1, 2).permute(1, 0, 2);
        var s = q.matmul(k.transpose(1, 2)) / Math.Sqrt(qkv.shape[3]);
        s = s.masked_fill(same.logical_not().unsqueeze(0), double.NegativeInfinity);
        return s.softmax(-1).matmul(v).permute(1, 0, 2);
    }

    [Theory]
    [InlineData(1, 4, 0)]
    [InlineData(1, 4, 2)]
    [InlineData(1, 3, 1)]
    [InlineData(3, 4, 2)]   // padded groups with masks
    [InlineData(0, 4, 2)]   // power-of-two buckets
    public void PackedWindowedAttentionMatchesBlockDiagonalReference(long quantum, int window, int shift)
    {
        using var scope = torch.NewDisposeScope();
        long old = AttentionPlan.WindowLengthQuantum;
        try
        {
            AttentionPlan.WindowLengthQuantum = quantum;
            var rng = new Generator(31);
            var coords = SparseTestData.RandomCoords(9, new[] { 150, 40, 90 }, 29);
            long n = coords.shape[0];
            var qkv = torch.randn(new[] { n, 3, 2, 6 }, dtype: ScalarType.Float64, generator: rng);
            var plan = AttentionPlan.Windowed(new SparseCoordinates(coords, 9), window, shift);
            var expected = BlockDiagonalReference(qkv, coords, window, shift);
            var actual = SparseAttention.SelfAttention(qkv, plan);
            // float64 softmax over at most a few dozen keys per window: agreement to a few ulps of 1, far below 1e-14
            Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-14, $"{SparseTestData.MaxRel(expected, actual)}");
            // the same as the separate-q/k/v path
            var separate = SparseAttention.SelfAttention(qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), plan);
            Assert.True(SparseTestData.MaxRel(separate, actual) < 1e-14);
            // every row is written exactly once
            var outRows = torch.cat(plan.Chunks.Select(c => c.OutRows).ToArray(), 0).sort().Values;
            Assert.True(outRows.eq(torch.arange(n, dtype: ScalarType.Int64)).all().item<bool>());
            if (quantum == 1)
            {
                Assert.All(plan.Chunks, c => Assert.Null(c.KeyValid));   // equal lengths: no padding, no mask
                Assert.True(plan.Chunks.Count >= plan.SequenceLengths.Distinct().Count());
            }
            else if (quantum == 3)
                Assert.Contains(plan.Chunks, c => c.KeyValid is not null);

            // float32 goes through libtorch's fused SDPA: the forward error of a D-term score and of a softmax-weighted
            // sum over L keys is at most about (D + L)·u each (u the float32 unit roundoff), so 2·(D + L)·u relative to
            // max|ref| bounds it, whatever the kernel's summation order (measured ≈ 1e-7)
            var f32 = SparseAttention.SelfAttention(qkv.to(ScalarType.Float32), plan);
            Assert.Equal(ScalarType.Float32, f32.dtype);
            double f32Bound = 2 * (qkv.shape[3] + plan.SequenceLengths.Max()) * ReducedPrecision.UnitRoundoff(ScalarType.Float32);
            Assert.True(SparseTestData.MaxRel(expected, f32) < f32Bound, $"{SparseTestData.MaxRel(expected, f32)} (bound {f32Bound})");
        }
        finally
        {
            AttentionPlan.WindowLengthQuantum = old;
        }
    }

    [Fact]
    public void RowChunkedMlpWithoutAutogradEqualsTheAutogradPathAndLeavesTheInputAlone()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(41);
        var coords = SparseTestData.RandomCoords(9, new[] { 200, 70 }, 43);
        long n = coords.shape[0];
        var block = MdtDist.Trellis.Pipeline.RandomTinyTrellis.Randomize(new SparseTransformerBlock(32, 4, 4,
            SparseBlockAttention.ForBlock("swin", 4, 1), false, true, false, ScalarType.Float64, null), 45);
        var x = new SparseTensor(torch.randn(new[] { n, 32L }, dtype: ScalarType.Float64, generator: rng), new SparseCoordinates(coords, 9));
        var input = x.Feats.clone();
        var withGrad = block.Forward(x).Feats.detach();
        long old = FeedForwardNet.RowChunkElements;
        try
        {
            FeedForwardNet.RowChunkElements = 128 * 50;   // 50 rows per chunk at 128 hidden channels: 6 chunks
            using var _ = torch.no_grad();
            var chunked = block.Forward(x).Feats;
            // the same operations row by row in float64: GEMM blocking may change with the row count, which reorders the
            // K-term sums (K ≤ 128 hidden channels) of the block's 4 matrix products: at most 4·2·K·u (u = 2⁻⁵³)
            double chunkBound = 4 * 2 * 128 * ReducedPrecision.UnitRoundoff(ScalarType.Float64);
            Assert.True(SparseTestData.MaxRel(withGrad, chunked) < chunkBound, $"{SparseTestData.MaxRel(withGrad, chunked)} (bound {chunkBound})");
            Assert.True(x.Feats.eq(input).all().item<bool>(), "the block changed its input features in place");
        }
        finally
        {
            FeedForwardNet.RowChunkElements = old;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReducedPrecisionLayerNormRoundsTheFloat32ResultOnce(bool affine)
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(51);
        var x32 = torch.randn(new[] { 300L, 96 }, generator: rng) * 3 + 0.5;
        var w = affine ? torch.randn(new[] { 96L }, generator: rng) * 0.1 + 1 : null;
        var b = affine ? torch.randn(new[] { 96L }, generator: rng) * 0.1 : null;
        foreach (var dt in new[] { ScalarType.BFloat16, ScalarType.Float16 })
        {
            var x = x32.to(dt);
            var y = Precision.LayerNorm(x, w?.to(dt), b?.to(dt), 1e-6);
            Assert.Equal(dt, y.dtype);
            // TRELLIS: layer_norm(x.float()) in float32, then .type(x.dtype)
            var reference = nn.functional.layer_norm(x.to(ScalarType.Float32), new[] { 96L }, w?.to(dt).to(ScalarType.Float32), b?.to(dt).to(ScalarType.Float32), 1e-6);
            // libtorch's reduced-precision kernel computes in float32 too; the two differ only in float32 rounding before the
            // final rounding, so each element is within one unit in the last place of the reduced format: |diff| ≤ 2·u·|ref|
            // (u = 2^-8 for bfloat16, 2^-11 for float16), plus the format's smallest normal step for values near 0
            double u = ReducedPrecision.UnitRoundoff(dt);
            var bound = reference.abs() * (2 * u) + 1e-6;
            var diff = (y.to(ScalarType.Float32) - reference).abs();
            Assert.True((diff <= bound).all().item<bool>(), $"{dt}: max |diff| {diff.max().item<float>()}");
            // and most elements are identical to the rounded float32 result: a float32 difference of k ulps moves the rounding
            // only for values within k float32 ulps of a midpoint of the 16-bit format, a fraction ≈ 2k·2^-(24-p) (p = 8 or 11
            // significand bits): < 1 % for float16 up to k ≈ 10, and far less for bfloat16
            long same = (y == reference.to(dt)).sum().item<long>();
            Assert.True(same > 0.99 * y.numel(), $"{dt}: {same} of {y.numel()} identical");
        }
    }

    [Fact]
    public void BFloat16GaussianDecoderStaysWithinTheRoundingBarOfFloat64()
    {
        using var c = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "slat_dec_gs.json"));
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var m64 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        var m16 = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.BFloat16);
        SparseGolden.LoadExact(m64, c.WithPrefix("model."), c.Name);
        foreach (var ((_, p16), (_, p64)) in m16.named_parameters().Zip(m64.named_parameters())) p16.copy_(p64);
        m64.eval();
        m16.eval();
        var h64 = m64.ForwardFeatures(new SparseTensor(c["in.feats"], c["in.coords"]));
        var h16 = m16.ForwardFeatures(new SparseTensor(c["in.feats"].to(ScalarType.BFloat16), c["in.coords"]));
        Assert.Equal(ScalarType.BFloat16, h16.Feats.dtype);
        // bar 6·u·L for L bfloat16 layers (ReducedPrecision); the error must also exceed float32's u (it is a bf16 run)
        int layers = ReducedPrecision.RoundedLayers(m16, ScalarType.BFloat16);
        double err = ReducedPrecision.RelativeError(h64.Feats, h16.Feats);
        Assert.True(err < ReducedPrecision.Tolerance(ScalarType.BFloat16, layers) && err > ReducedPrecision.UnitRoundoff(ScalarType.Float32),
            $"bf16 decoder error {err} over {layers} layers");
    }
}
