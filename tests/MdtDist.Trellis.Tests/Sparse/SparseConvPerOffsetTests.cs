using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

/// <summary>The per-offset gather-GEMM the CPU takes for wide convolutions computes the same convolution.</summary>
[Collection("SparseStatics")]
public class SparseConvPerOffsetTests
{
    [Fact]
    public void WideConvolutionsTakeThePerOffsetPathAndMatchTheDenseConv()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(21);
        const int r = 7;
        const long cin = 160, cout = 256;   // 27·160 = 4320 im2col columns > PerOffsetMinColumns, 256 outputs: the per-offset path
        Assert.True(SparseConv3d.UsePerOffset(27, cin, cout, DeviceType.CPU));
        Assert.False(SparseConv3d.UsePerOffset(27, 128, cout, DeviceType.CPU));
        Assert.False(SparseConv3d.UsePerOffset(27, 2048, 128, DeviceType.CPU));
        var coords = SparseTestData.RandomCoords(r, new[] { 70, 30 }, seed: 12);
        var feats = torch.randn(coords.shape[0], cin, dtype: ScalarType.Float64, generator: rng);
        var conv = new SparseConv3d(cin, cout, 3, true, ScalarType.Float64);
        using (torch.no_grad()) conv.conv.bias!.normal_(generator: rng);
        var actual = conv.Forward(new SparseTensor(feats, coords, r)).Feats;

        var dense = SparseTestData.ToDense(feats, coords, 2, r);
        var expectedDense = nn.functional.conv3d(dense, conv.conv.weight.permute(0, 4, 1, 2, 3), conv.conv.bias, padding: new long[] { 1, 1, 1 });
        var expected = SparseTestData.FromDense(expectedDense, coords);
        // float64 sums of 27·160 products in another order: a few ulps of the largest partial sums
        Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-13, $"rel {SparseTestData.MaxRel(expected, actual)}");

        // the im2col path on the same input (the switch off) agrees to rounding as well
        SparseConv3d.PerOffsetEnabled = false;
        try
        {
            var im2col = conv.Forward(new SparseTensor(feats, coords, r)).Feats;
            Assert.True(SparseTestData.MaxRel(im2col, actual) < 1e-13);
        }
        finally
        {
            SparseConv3d.PerOffsetEnabled = true;
        }
    }

    [Fact]
    public void PerOffsetChunksAndEmptyInputs()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(22);
        var coords = SparseTestData.BlobCoords(14, 6.0, 1);
        long n = coords.shape[0];
        Assert.True(n > 600, $"{n} rows: more than one 512-row chunk");
        var feats = torch.randn(n, 8, dtype: ScalarType.Float64, generator: rng);
        var weight = torch.randn(new long[] { 5, 3, 3, 3, 8 }, dtype: ScalarType.Float64, generator: rng);
        var bias = torch.randn(5, dtype: ScalarType.Float64, generator: rng);
        var nbr = SparseNeighbours.Map(new SparseCoordinates(coords.to(ScalarType.Int32), 14), 3);
        long old = SparseConv3d.GatherChunkElements;
        try
        {
            SparseConv3d.GatherChunkElements = 64;   // per-offset chunks of max(512, 64·8/8) = 512 rows
            var chunked = SparseConv3d.PerOffsetGemm(feats, nbr, weight, bias);
            var whole = SparseConv3d.GatherGemm(feats, nbr, weight, bias);
            Assert.True(SparseTestData.MaxRel(whole, chunked) < 1e-13);
            var noBias = SparseConv3d.PerOffsetGemm(feats, nbr, weight, null);
            Assert.True(SparseTestData.MaxRel(whole - bias, noBias) < 1e-13);
        }
        finally
        {
            SparseConv3d.GatherChunkElements = old;
        }
        var empty = SparseConv3d.PerOffsetGemm(torch.zeros(0, 8, dtype: ScalarType.Float64), torch.zeros(0, 27, dtype: ScalarType.Int64), weight, bias);
        Assert.Equal(new long[] { 0, 5 }, empty.shape);
    }
}
