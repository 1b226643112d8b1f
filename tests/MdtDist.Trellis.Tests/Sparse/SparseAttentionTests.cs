using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

[Collection("SparseStatics")]
public class SparseAttentionTests
{
    /// <summary>Reference: dense N×N attention with -inf where two rows are not in the same group.</summary>
    private static Tensor MaskedReference(Tensor q, Tensor k, Tensor v, long[] group)
    {
        long n = q.shape[0];
        var g = torch.tensor(group);
        var same = g.unsqueeze(1).eq(g.unsqueeze(0));                 // [N, N]
        var qh = q.permute(1, 0, 2);
        var kh = k.permute(1, 0, 2);
        var vh = v.permute(1, 0, 2);
        var s = qh.matmul(kh.transpose(1, 2)) / Math.Sqrt(q.shape[2]);
        s = s.masked_fill(same.logical_not().unsqueeze(0), double.NegativeInfinity);
        return s.softmax(-1).matmul(vh).permute(1, 0, 2);
    }

    private static long[] WindowGroups(Tensor coords, int w, int shift)
    {
        var c = coords.data<long>().ToArray();
        int n = c.Length / 4;
        var g = new long[n];
        for (int i = 0; i < n; i++)
        {
            long wx = (c[i * 4 + 1] + shift) / w, wy = (c[i * 4 + 2] + shift) / w, wz = (c[i * 4 + 3] + shift) / w;
            g[i] = ((c[i * 4] * 100 + wx) * 100 + wy) * 100 + wz;
        }
        return g;
    }

    [Theory]
    [InlineData(4, 0)]
    [InlineData(4, 2)]
    [InlineData(3, 1)]
    public void WindowedAttentionMatchesBlockDiagonalReference(int window, int shift)
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(9);
        var coords = SparseTestData.RandomCoords(9, new[] { 120, 45, 80 }, 13);
        long n = coords.shape[0];
        var q = torch.randn(n, 2, 5, dtype: ScalarType.Float64, generator: rng);
        var k = torch.randn(n, 2, 5, dtype: ScalarType.Float64, generator: rng);
        var v = torch.randn(n, 2, 3, dtype: ScalarType.Float64, generator: rng);
        var sc = new SparseCoordinates(coords, 9);
        var plan = AttentionPlan.Windowed(sc, window, shift);
        var actual = SparseAttention.SelfAttention(q, k, v, plan);
        var expected = MaskedReference(q, k, v, WindowGroups(coords, window, shift));
        Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-14, $"{SparseTestData.MaxRel(expected, actual)}");
        Assert.Equal(n, plan.SequenceLengths.Sum());
        Assert.True(plan.SequenceLengths.Length > 3);
    }

    [Fact]
    public void FullAttentionIsPerSampleEvenWithTinyChunks()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(10);
        var coords = SparseTestData.RandomCoords(6, new[] { 40, 70, 3, 70 }, 17);
        long n = coords.shape[0];
        var q = torch.randn(n, 3, 4, dtype: ScalarType.Float64, generator: rng);
        var k = torch.randn(n, 3, 4, dtype: ScalarType.Float64, generator: rng);
        var v = torch.randn(n, 3, 4, dtype: ScalarType.Float64, generator: rng);
        var groups = coords[.., 0].data<long>().ToArray();
        var expected = MaskedReference(q, k, v, groups);

        var actual = SparseAttention.SelfAttention(q, k, v, AttentionPlan.Full(new SparseCoordinates(coords)));
        Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-14);

        long oldChunk = AttentionPlan.ChunkScoreElements, oldScores = SparseAttention.ExplicitScoreElements;
        try
        {
            AttentionPlan.ChunkScoreElements = 1;         // one sequence per chunk
            SparseAttention.ExplicitScoreElements = 100;  // a few queries at a time
            var chunked = SparseAttention.SelfAttention(q, k, v, AttentionPlan.Full(new SparseCoordinates(coords)));
            Assert.True(SparseTestData.MaxRel(expected, chunked) < 1e-14);
        }
        finally
        {
            AttentionPlan.ChunkScoreElements = oldChunk;
            SparseAttention.ExplicitScoreElements = oldScores;
        }
    }

    [Fact]
    public void Float32PathUsesFusedAttentionWithTheSameMasking()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(11);
        var coords = SparseTestData.RandomCoords(8, new[] { 90, 60 }, 19);
        long n = coords.shape[0];
        var q = torch.randn(n, 2, 8, dtype: ScalarType.Float64, generator: rng);
        var k = torch.randn(n, 2, 8, dtype: ScalarType.Float64, generator: rng);
        var v = torch.randn(n, 2, 8, dtype: ScalarType.Float64, generator: rng);
        var plan = AttentionPlan.Windowed(new SparseCoordinates(coords), 4, 2);
        var exact = SparseAttention.SelfAttention(q, k, v, plan);
        var f32 = SparseAttention.SelfAttention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32), plan);
        Assert.Equal(ScalarType.Float32, f32.dtype);
        Assert.True(SparseTestData.MaxRel(exact, f32) < 1e-5, $"{SparseTestData.MaxRel(exact, f32)}");
    }

    [Fact]
    public void CrossAttentionAttendsToEachSamplesOwnContext()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(12);
        var coords = SparseTestData.RandomCoords(5, new[] { 7, 11 }, 23);
        long n = coords.shape[0];
        var q = torch.randn(n, 2, 4, dtype: ScalarType.Float64, generator: rng);
        var k = torch.randn(2, 6, 2, 4, dtype: ScalarType.Float64, generator: rng);
        var v = torch.randn(2, 6, 2, 4, dtype: ScalarType.Float64, generator: rng);
        var actual = SparseAttention.CrossAttention(q, k, v, new SparseCoordinates(coords));
        for (int b = 0; b < 2; b++)
        {
            long s = b == 0 ? 0 : 7, len = b == 0 ? 7 : 11;
            var qb = q.narrow(0, s, len).permute(1, 0, 2);
            var p = (qb.matmul(k[b].permute(1, 2, 0)) / 2.0).softmax(-1);
            var e = p.matmul(v[b].permute(1, 0, 2)).permute(1, 0, 2);
            Assert.True(SparseTestData.MaxRel(e, actual.narrow(0, s, len)) < 1e-14);
        }
    }
}
