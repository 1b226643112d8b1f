using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using MdtDist.Trellis.Tests.Sparse;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public class FlexiCubesInputsTests
{
    [Fact]
    public void OneCubeGivesItsEightCornersInLexicographicOrder()
    {
        using var scope = torch.NewDisposeScope();
        const int res = 4;
        var feats = torch.randn(1, 101, dtype: ScalarType.Float64, generator: new Generator(1));
        using var fc = FlexiCubesInputs.FromFeatures(torch.tensor(new long[] { 1, 2, 3 }).view(1, 3), feats, res, useColor: true);
        Assert.Equal(8, fc.VertexCount);
        // lexicographic vertex order (z fastest) versus TRELLIS's corner order (x fastest)
        int[] cornerOfVertex = { 0, 4, 2, 6, 1, 5, 3, 7 };
        var f = feats.data<double>().ToArray();
        var pos = fc.VertexPositions.data<long>().ToArray();
        var attrs = fc.VertexAttributes.data<double>().ToArray();
        for (int v = 0; v < 8; v++)
        {
            int k = cornerOfVertex[v];
            Assert.Equal(new long[] { 1 + (k & 1), 2 + ((k >> 1) & 1), 3 + ((k >> 2) & 1) }, pos[(3 * v)..(3 * v + 3)]);
            Assert.Equal(f[k] - 1.0 / res, attrs[10 * v], 15);                           // sdf + bias
            for (int d = 0; d < 3; d++) Assert.Equal(f[8 + 3 * k + d], attrs[10 * v + 1 + d], 15); // deform
            for (int d = 0; d < 6; d++) Assert.Equal(f[53 + 6 * k + d], attrs[10 * v + 4 + d], 15); // colour
        }
        Assert.True(fc.CubeWeights.eq(feats[.., 32..53]).all().item<bool>());
        // the input is not modified (TRELLIS adds the sdf bias in place)
        Assert.Equal(f[0], feats[0, 0].item<double>());
    }

    [Fact]
    public void SharedVerticesAverageTheirCubes()
    {
        using var scope = torch.NewDisposeScope();
        const int res = 3;
        var coords = torch.tensor(new long[] { 0, 0, 0, 1, 0, 0 }).view(2, 3);   // two cubes sharing the x = 1 face
        var feats = torch.zeros(2, 53, dtype: ScalarType.Float64);
        feats[0, 0..8] = torch.full(8, 2.0, dtype: ScalarType.Float64);
        feats[1, 0..8] = torch.full(8, 4.0, dtype: ScalarType.Float64);
        using var fc = FlexiCubesInputs.FromFeatures(coords, feats, res, useColor: false);
        Assert.Equal(12, fc.VertexCount);
        var sdf = fc.VertexAttributes[.., 0];
        var x = fc.VertexPositions[.., 0];
        Assert.Equal(2 - 1.0 / 3, sdf[x.eq(0)].max().item<double>(), 15);
        Assert.Equal(3 - 1.0 / 3, sdf[x.eq(1)].max().item<double>(), 15);
        Assert.Equal(3 - 1.0 / 3, sdf[x.eq(1)].min().item<double>(), 15);
        Assert.Equal(4 - 1.0 / 3, sdf[x.eq(2)].min().item<double>(), 15);

        // dense grids: the scalar field is 1 away from the cubes, the weights 0 outside them
        var field = fc.DenseScalarField();
        Assert.Equal(64, field.shape[0]);
        Assert.Equal(64 - 12, field.eq(1.0).sum().item<long>());
        Assert.True(field.index_select(0, fc.VertexIds()).eq(sdf).all().item<bool>());
        Assert.Equal(27, fc.DenseWeights().shape[0]);
        Assert.Equal(new long[] { 0, 9 }, fc.CubeIds().data<long>().ToArray());
        // undeformed vertices sit on the grid: v / res - 0.5
        var dv = fc.DenseVertices();
        var (verts, cubes) = FlexiCubesInputs.DenseGrid(res);
        Assert.True(SparseTestData.MaxRel(verts.to(ScalarType.Float64) / res - 0.5, dv) < 1e-15);
        Assert.Equal(new long[] { 0, 16, 4, 20, 1, 17, 5, 21 }, cubes[0].data<long>().ToArray());
        Assert.Equal(new long[] { 64, 3 }, verts.shape);
        Assert.Equal(new long[] { 27, 8 }, cubes.shape);
    }

    [Fact]
    public void DeformationIsBoundedByHalfACell()
    {
        using var scope = torch.NewDisposeScope();
        const int res = 8;
        var feats = torch.randn(3, 53, dtype: ScalarType.Float64, generator: new Generator(5)) * 50;
        using var fc = FlexiCubesInputs.FromFeatures(torch.tensor(new long[] { 0, 0, 0, 7, 7, 7, 3, 4, 5 }).view(3, 3), feats, res, false);
        var rest = fc.VertexPositions.to(ScalarType.Float64) / res - 0.5;
        var shift = (fc.DeformedVertices() - rest).abs().max().item<double>();
        Assert.True(shift < 0.5 / res && shift > 0.4 / res, $"shift {shift}");
    }

    [Fact]
    public void InvalidInputsAreRejected()
    {
        using var scope = torch.NewDisposeScope();
        var f = torch.zeros(2, 53, dtype: ScalarType.Float64);
        var dup = torch.tensor(new long[] { 1, 1, 1, 1, 1, 1 }).view(2, 3);
        Assert.Contains("more than once", Assert.Throws<ArgumentException>(() => FlexiCubesInputs.FromFeatures(dup, f, 4, false)).Message);
        var outside = torch.tensor(new long[] { 1, 1, 1, 4, 0, 0 }).view(2, 3);
        Assert.Contains("[0, 4)", Assert.Throws<ArgumentException>(() => FlexiCubesInputs.FromFeatures(outside, f, 4, false)).Message);
        var ok = torch.tensor(new long[] { 1, 1, 1, 2, 0, 0 }).view(2, 3);
        Assert.Contains("[2, 101]", Assert.Throws<ArgumentException>(() => FlexiCubesInputs.FromFeatures(ok, f, 4, true)).Message);
        Assert.Throws<ArgumentException>(() => FlexiCubesInputs.FromFeatures(ok.to(ScalarType.Float64), f, 4, false));
    }
}
