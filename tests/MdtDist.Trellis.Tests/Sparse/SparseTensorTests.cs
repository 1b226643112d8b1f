using MdtDist.Core.Flow;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

public class SparseTensorTests
{
    private static Tensor Coords(params long[][] rows) => torch.tensor(rows.SelectMany(r => r).ToArray(), dtype: ScalarType.Int64).view(-1, 4);

    [Fact]
    public void ExposesLayoutRangesAndInt32Coords()
    {
        using var scope = torch.NewDisposeScope();
        var coords = Coords(new long[] { 0, 1, 2, 3 }, new long[] { 0, 0, 0, 0 }, new long[] { 1, 5, 5, 5 }, new long[] { 1, 0, 1, 0 }, new long[] { 1, 2, 2, 2 });
        var feats = torch.randn(5, 3, dtype: ScalarType.Float64);
        var st = new SparseTensor(feats, coords, resolution: 8);
        Assert.Equal(2, st.BatchSize);
        Assert.Equal(new[] { (0L, 2L), (2L, 3L) }, st.RowRanges);
        Assert.Equal(ScalarType.Int32, st.Coords.dtype);
        Assert.True(st.Coords.to(ScalarType.Int64).eq(coords).all().item<bool>());
        Assert.Equal(5, st.Layout.Coordinates.Count);
        Assert.Equal(new long[] { 2, 3 }, st.Layout.RowCounts);

        // Core's per-sample reductions see each sample's rows x channels.
        var norms = st.Layout.NormPerSample(feats);
        Assert.Equal(feats[..2].norm().item<double>(), norms[0].item<double>(), 12);
        Assert.Equal(feats[2..].norm().item<double>(), norms[1].item<double>(), 12);

        // A latent round trip keeps the coordinate object (and with it the caches).
        var back = SparseTensor.FromLatent(st.ToLatent());
        Assert.Same(st.Coordinates, back.Coordinates);
        var replaced = st.ReplaceFeats(feats * 2);
        Assert.Same(st.Coordinates, replaced.Coordinates);
        Assert.Throws<ArgumentException>(() => st.ReplaceFeats(torch.zeros(4, 3)));
        Assert.Throws<ArgumentException>(() => SparseTensor.FromLatent(Latent.Dense(torch.zeros(2, 3))));
    }

    [Fact]
    public void EmptySamplesNeedAnExplicitBatchSize()
    {
        using var scope = torch.NewDisposeScope();
        var coords = Coords(new long[] { 0, 1, 1, 1 }, new long[] { 2, 1, 1, 1 });
        var c = new SparseCoordinates(coords, batchSize: 4);
        Assert.Equal(new long[] { 1, 0, 1, 0 }, c.RowCounts);
        var ex = Assert.Throws<ArgumentException>(() => new SparseCoordinates(coords, batchSize: 2));
        Assert.Contains("batchSize", ex.Message);
    }

    [Fact]
    public void RejectsCoordsOutsideTheGrid()
    {
        using var scope = torch.NewDisposeScope();
        var coords = Coords(new long[] { 0, 1, 2, 3 }, new long[] { 0, 1, 8, 3 });
        var ex = Assert.Throws<ArgumentException>(() => new SparseTensor(torch.zeros(2, 1), coords, resolution: 8));
        Assert.Contains("row 1", ex.Message);
        Assert.Contains("y = 8", ex.Message);
        Assert.Contains("outside the grid [0, 8)", ex.Message);

        var negative = Coords(new long[] { 0, 1, 2, -1 });
        var ex2 = Assert.Throws<ArgumentException>(() => new SparseCoordinates(negative));
        Assert.Contains("z = -1", ex2.Message);
    }

    [Fact]
    public void RejectsDuplicateVoxelsWithinASample()
    {
        using var scope = torch.NewDisposeScope();
        var coords = Coords(new long[] { 0, 1, 2, 3 }, new long[] { 0, 4, 4, 4 }, new long[] { 0, 1, 2, 3 }, new long[] { 1, 1, 2, 3 });
        var ex = Assert.Throws<ArgumentException>(() => new SparseCoordinates(coords, 8));
        Assert.Contains("duplicate voxel", ex.Message);
        Assert.Contains("rows 0 and 2", ex.Message);

        // The same voxel in two different samples is fine.
        var ok = Coords(new long[] { 0, 1, 2, 3 }, new long[] { 1, 1, 2, 3 });
        Assert.Equal(2, new SparseCoordinates(ok, 8).BatchSize);
    }

    [Fact]
    public void RejectsRowsThatAreNotContiguousPerSample()
    {
        using var scope = torch.NewDisposeScope();
        var coords = Coords(new long[] { 0, 1, 2, 3 }, new long[] { 1, 1, 2, 3 }, new long[] { 0, 2, 2, 2 });
        var ex = Assert.Throws<ArgumentException>(() => new SparseCoordinates(coords));
        Assert.Contains("contiguous per sample", ex.Message);
        Assert.Contains("row 2", ex.Message);
    }

    [Fact]
    public void RejectsMalformedCoordTensors()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Contains("[N, 4]", Assert.Throws<ArgumentException>(() => new SparseCoordinates(torch.zeros(new long[] { 3, 3 }, dtype: ScalarType.Int32))).Message);
        Assert.Contains("integer", Assert.Throws<ArgumentException>(() => new SparseCoordinates(torch.zeros(3, 4))).Message);
        var coords = Coords(new long[] { 0, 1, 2, 3 });
        Assert.Contains("one row per voxel", Assert.Throws<ArgumentException>(() => new SparseTensor(torch.zeros(2, 4), coords)).Message);
    }
}
