using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

/// <summary>Sparse tensors at the edges: empty structures, coordinates near the int32 limit, int64 coordinates that do not fit.</summary>
public class SparseHostileTests
{
    [Fact]
    public void ZeroVoxelSparseTensorWithAGivenBatchSize()
    {
        using var coords = torch.zeros(new long[] { 0, 4 }, dtype: ScalarType.Int32);
        using var feats = torch.zeros(new long[] { 0, 8 });
        var st = new SparseTensor(feats, coords, resolution: 16, batchSize: 3);
        Assert.Equal(3, st.BatchSize);
        Assert.Equal(0, st.Count);
        Assert.Equal(new long[] { 0, 0, 0 }, st.Coordinates.RowCounts);
        Assert.Equal(new long[] { 0, 0, 0, 0 }, st.Coordinates.RowOffsets);
        Assert.Equal(new long[] { 0, 4 }, st.Coords.shape);
        Assert.All(st.RowRanges, r => Assert.Equal(0, r.Length));
        // per-sample values expand to zero rows
        using var perRow = st.PerRow(torch.ones(3, 8));
        Assert.Equal(new long[] { 0, 8 }, perRow.shape);
    }

    [Fact]
    public void ZeroVoxelsWithoutABatchSizeSayWhatToPass()
    {
        using var coords = torch.zeros(new long[] { 0, 4 }, dtype: ScalarType.Int64);
        var e = Assert.Throws<ArgumentException>(() => new SparseCoordinates(coords));
        Assert.Contains("pass batchSize explicitly", e.Message);
    }

    [Fact]
    public void DistinctVoxelsAtTheInt32LimitAreNotDuplicates()
    {
        // The old linear code ((s·X + x)·Y + y)·Z + z overflowed int64 here and reported distinct voxels as duplicates.
        int m = int.MaxValue;
        using var coords = torch.tensor(new int[] { 0, m, 0, 0, 0, 0, m, 0, 0, 0, 0, m, 0, m, m, m, 1, m, m, m }, new long[] { 5, 4 });
        var c = new SparseCoordinates(coords);
        Assert.Equal(5, c.Count);
        Assert.Equal(m, c.MaxCoordinate);

        // and a real duplicate among them is still found, naming both rows
        using var dup = torch.tensor(new int[] { 0, m, 0, 0, 0, 0, m, 0, 0, m, 0, 0 }, new long[] { 3, 4 });
        var e = Assert.Throws<ArgumentException>(() => new SparseCoordinates(dup));
        Assert.Contains("rows 0 and 2", e.Message);
    }

    [Theory]
    [InlineData(1, 4294967297L, "x = 4294967297")]
    [InlineData(3, -4294967295L, "z = -4294967295")]
    [InlineData(0, 2147483648L, "sample index 2147483648")]
    public void Int64CoordinatesThatDoNotFitInt32AreRejected(int column, long value, string expected)
    {
        // Without a resolution, 2^32 + 1 used to be stored silently as 1 by the int32 conversion.
        var data = new long[] { 0, 1, 2, 3 };
        data[column] = value;
        using var coords = torch.tensor(data, new long[] { 1, 4 });
        var e = Assert.Throws<ArgumentException>(() => new SparseCoordinates(coords));
        Assert.Contains(expected, e.Message);
    }
}
