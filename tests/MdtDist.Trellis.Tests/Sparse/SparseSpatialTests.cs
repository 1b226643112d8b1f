using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

public class SparseSpatialTests
{
    [Fact]
    public void DownsampleIsSumOverCountPlusOneOnSortedCoarseSites()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(7);
        var coords = SparseTestData.RandomCoords(6, new[] { 50, 30 }, 21);
        long n = coords.shape[0];
        var feats = torch.randn(n, 3, dtype: ScalarType.Float64, generator: rng);
        var x = new SparseTensor(feats, coords, 6);
        var y = SparseSpatial.Downsample(x, 2);

        // Reference with plain loops.
        var c = coords.data<long>().ToArray();
        var f = feats.data<double>().ToArray();
        var groups = new SortedDictionary<(long, long, long, long), (double[] sum, int count)>();
        for (int i = 0; i < n; i++)
        {
            var key = (c[i * 4], c[i * 4 + 1] / 2, c[i * 4 + 2] / 2, c[i * 4 + 3] / 2);
            if (!groups.TryGetValue(key, out var g)) g = (new double[3], 0);
            for (int k = 0; k < 3; k++) g.sum[k] += f[i * 3 + k];
            groups[key] = (g.sum, g.count + 1);
        }
        var expCoords = groups.Keys.SelectMany(k => new[] { k.Item1, k.Item2, k.Item3, k.Item4 }).ToArray();
        var expFeats = groups.Values.SelectMany(v => v.sum.Select(s => s / (v.count + 1))).ToArray();
        Assert.Equal(expCoords, y.Coords.to(ScalarType.Int64).data<long>().ToArray());
        Assert.True(SparseTestData.MaxRel(torch.tensor(expFeats).view(-1, 3), y.Feats) < 1e-15);
        Assert.Equal(x.BatchSize, y.BatchSize);
        Assert.Equal(groups.Keys.Count(k => k.Item1 == 0), y.Coordinates.RowCounts[0]);

        // Up-sampling copies every coarse row back to its fine rows, in the original fine order.
        var up = SparseSpatial.Upsample(y, 2);
        Assert.Same(x.Coordinates, up.Coordinates);
        for (int i = 0; i < n; i++)
        {
            var key = (c[i * 4], c[i * 4 + 1] / 2, c[i * 4 + 2] / 2, c[i * 4 + 3] / 2);
            int j = groups.Keys.ToList().IndexOf(key);
            Assert.True(up.Feats[i].eq(y.Feats[j]).all().item<bool>());
        }
    }

    [Fact]
    public void UpsampleWithoutADownsampleFails()
    {
        using var scope = torch.NewDisposeScope();
        var x = new SparseTensor(torch.zeros(3, 2), SparseTestData.RandomCoords(4, new[] { 3 }, 1));
        var ex = Assert.Throws<InvalidOperationException>(() => SparseSpatial.Upsample(x, 2));
        Assert.Contains("SparseDownsample", ex.Message);
    }

    [Fact]
    public void SubdivideListsEightChildrenPerVoxelWithZFastest()
    {
        using var scope = torch.NewDisposeScope();
        var coords = torch.tensor(new long[] { 0, 1, 2, 3, 1, 0, 0, 0 }).view(2, 4);
        var feats = torch.tensor(new double[] { 1, 2, 3, 4 }).view(2, 2);
        var y = SparseSpatial.Subdivide(new SparseTensor(feats, coords, 4));
        Assert.Equal(16, y.Count);
        var yc = y.Coords.to(ScalarType.Int64).data<long>().ToArray();
        int row = 0;
        foreach (var (b, x0, y0, z0) in new[] { (0L, 2L, 4L, 6L), (1L, 0L, 0L, 0L) })
            for (int dx = 0; dx < 2; dx++)
                for (int dy = 0; dy < 2; dy++)
                    for (int dz = 0; dz < 2; dz++, row++)
                        Assert.Equal(new[] { b, x0 + dx, y0 + dy, z0 + dz }, yc.Skip(row * 4).Take(4).ToArray());
        Assert.True(y.Feats[..8].eq(feats[0].expand(8, 2)).all().item<bool>());
        Assert.True(y.Feats[8..].eq(feats[1].expand(8, 2)).all().item<bool>());
        Assert.Equal(8, y.Coordinates.Resolution);
    }

    [Fact]
    public void GroupNormNormalisesEachSampleOverAllItsVoxels()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(8);
        var coords = SparseTestData.RandomCoords(5, new[] { 17, 31 }, 5);
        var feats = torch.randn(48, 8, dtype: ScalarType.Float64, generator: rng) * 3 + 1;
        var gn = new SparseGroupNorm32(4, 8, 1e-5, true, ScalarType.Float64);
        using (torch.no_grad())
        {
            gn.weight!.normal_(generator: rng);
            gn.bias!.normal_(generator: rng);
        }
        var y = gn.Forward(new SparseTensor(feats, coords)).Feats;
        var parts = new[] { feats[..17], feats[17..] }.Select(p =>
            nn.functional.group_norm(p.t().unsqueeze(0), 4, gn.weight, gn.bias, 1e-5).squeeze(0).t());
        var expected = torch.cat(parts.ToArray(), 0);
        Assert.True(SparseTestData.MaxRel(expected, y) < 1e-13, $"{SparseTestData.MaxRel(expected, y)}");
    }
}
