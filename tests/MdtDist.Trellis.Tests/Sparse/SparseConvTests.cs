using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

[Collection("SparseStatics")]
public class SparseConvTests
{
    /// <summary>
    /// A submanifold conv equals a dense zero-padded cross-correlation (nn.Conv3d, padding 1) read back at the active
    /// sites, with the KRSC weight [out, kx, ky, kz, in] permuted to PyTorch's [out, in, kx, ky, kz].
    /// </summary>
    [Fact]
    public void SubmanifoldConvMatchesDenseConvAtActiveSites()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(3);
        const int r = 7;
        var coords = SparseTestData.RandomCoords(r, new[] { 60, 25, 90 }, seed: 11);
        var feats = torch.randn(coords.shape[0], 5, dtype: ScalarType.Float64, generator: rng);
        var conv = new SparseConv3d(5, 6, 3, true, ScalarType.Float64);
        using (torch.no_grad()) conv.conv.bias!.normal_(generator: rng);
        var st = new SparseTensor(feats, coords, r);
        var actual = conv.Forward(st).Feats;

        var dense = SparseTestData.ToDense(feats, coords, 3, r);
        var w = conv.conv.weight.permute(0, 4, 1, 2, 3);
        var expectedDense = nn.functional.conv3d(dense, w, conv.conv.bias, padding: new long[] { 1, 1, 1 });
        var expected = SparseTestData.FromDense(expectedDense, coords);
        Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-13, $"rel {SparseTestData.MaxRel(expected, actual)}");

        // Neighbours never leak across samples: the same voxels in another sample see nothing of this one.
        Assert.Equal(coords.shape[0], actual.shape[0]);
    }

    [Fact]
    public void HashLookupAndChunkedGatherGiveTheSameResult()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(4);
        var coords = SparseTestData.BlobCoords(9, 3.2, 2);
        var feats = torch.randn(coords.shape[0], 4, dtype: ScalarType.Float64, generator: rng);
        var conv = new SparseConv3d(4, 3, 3, true, ScalarType.Float64);
        var reference = conv.Forward(new SparseTensor(feats, coords)).Feats;

        long oldLimit = SparseNeighbours.DenseVolumeLimit, oldChunk = SparseConv3d.GatherChunkElements;
        try
        {
            SparseNeighbours.DenseVolumeLimit = 0;          // force the sorted-code search
            SparseConv3d.GatherChunkElements = 27 * 4 * 7;  // 7 rows per chunk
            var other = conv.Forward(new SparseTensor(feats, coords)).Feats;
            Assert.True(SparseTestData.MaxRel(reference, other) < 1e-14);
        }
        finally
        {
            SparseNeighbours.DenseVolumeLimit = oldLimit;
            SparseConv3d.GatherChunkElements = oldChunk;
        }
    }

    [Fact]
    public void NeighbourMapIsCachedPerCoordinateSet()
    {
        using var scope = torch.NewDisposeScope();
        var coords = new SparseCoordinates(SparseTestData.RandomCoords(5, new[] { 20 }, 1));
        var a = SparseNeighbours.Map(coords, 3);
        var b = SparseNeighbours.Map(coords, 3);
        Assert.Same(a, b);
        Assert.Equal(new long[] { 20, 27 }, a.shape);
        // the centre offset (13) of every row is the row itself
        Assert.True(a[.., 13].eq(torch.arange(20)).all().item<bool>());
    }

    /// <summary>spconv's kernel-size-1 path reinterprets the [out, 1, 1, 1, in] buffer row-major as [in, out].</summary>
    [Fact]
    public void OneByOneConvReinterpretsTheWeightBuffer()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(5);
        var coords = SparseTestData.RandomCoords(4, new[] { 10 }, 2);
        var feats = torch.randn(10, 3, dtype: ScalarType.Float64, generator: rng);
        var conv = new SparseConv3d(3, 5, 1, true, ScalarType.Float64);
        var actual = conv.Forward(new SparseTensor(feats, coords)).Feats;
        var w = conv.conv.weight.contiguous();
        var data = w.data<double>().ToArray(); // [out=5, 1, 1, 1, in=3] row-major
        var expected = torch.zeros(10, 5, dtype: ScalarType.Float64);
        var f = feats.data<double>().ToArray();
        var bias = conv.conv.bias!.data<double>().ToArray();
        for (int n = 0; n < 10; n++)
            for (int o = 0; o < 5; o++)
            {
                double s = bias[o];
                for (int i = 0; i < 3; i++) s += f[n * 3 + i] * data[i * 5 + o]; // W viewed as [in, out]
                expected[n, o] = s;
            }
        Assert.True(SparseTestData.MaxRel(expected, actual) < 1e-14);
        // ... which is not the transposed weight (the two differ for a generic buffer)
        var transposed = torch.addmm(conv.conv.bias!, feats, w.view(5, 3).t(), 1, 1);
        Assert.True(SparseTestData.MaxRel(transposed, actual) > 1e-3);
    }

    [Fact]
    public void ConvBackpropagatesToFeatsAndWeights()
    {
        using var scope = torch.NewDisposeScope();
        var rng = new Generator(6);
        const int r = 5;
        var coords = SparseTestData.RandomCoords(r, new[] { 30, 20 }, 3);
        var feats = torch.randn(coords.shape[0], 2, dtype: ScalarType.Float64, generator: rng).requires_grad_();
        var conv = new SparseConv3d(2, 3, 3, true, ScalarType.Float64);
        var y = conv.Forward(new SparseTensor(feats, coords, r)).Feats;
        var g = torch.randn_like(y);
        (y * g).sum().backward();

        // Reference gradient through the dense formulation.
        var feats2 = feats.detach().clone().requires_grad_();
        var w2 = conv.conv.weight.detach().clone().requires_grad_();
        var dense = SparseTestData.ToDense(feats2, coords, 2, r);
        var yd = SparseTestData.FromDense(nn.functional.conv3d(dense, w2.permute(0, 4, 1, 2, 3), conv.conv.bias!.detach(), padding: new long[] { 1, 1, 1 }), coords);
        (yd * g).sum().backward();
        Assert.True(SparseTestData.MaxRel(feats2.grad!, feats.grad!) < 1e-13);
        Assert.True(SparseTestData.MaxRel(w2.grad!, conv.conv.weight.grad!) < 1e-13);
    }
}
