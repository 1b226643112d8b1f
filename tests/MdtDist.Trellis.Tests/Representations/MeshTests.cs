using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public class MeshTests
{
    /// <summary>A unit octahedron, counter-clockwise seen from outside.</summary>
    internal static Mesh Octahedron(ScalarType dtype = ScalarType.Float64)
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.tensor(new double[] { 1, 0, 0, -1, 0, 0, 0, 1, 0, 0, -1, 0, 0, 0, 1, 0, 0, -1 }, new long[] { 6, 3 }).to(dtype);
        var f = torch.tensor(new long[] { 0, 2, 4, 2, 1, 4, 1, 3, 4, 3, 0, 4, 2, 0, 5, 1, 2, 5, 3, 1, 5, 0, 3, 5 }, new long[] { 8, 3 });
        return new Mesh(v, f);
    }

    [Fact]
    public void OctahedronNormalsPointAlongTheVertices()
    {
        using var scope = torch.NewDisposeScope();
        using var m = Octahedron();
        Assert.True(MeshTestShapes.SignedVolume(m.Vertices.data<double>().ToArray(), m.Faces.data<long>().ToArray()) > 0);
        // every vertex sees 4 congruent faces placed symmetrically: the area-weighted normal is the vertex direction
        var n = m.ComputeVertexNormals();
        Assert.True((n - m.Vertices).abs().max().item<double>() < 1e-15);
        using var withN = m.WithVertexNormals();
        Assert.NotNull(withN.Normals);
        Assert.Equal(6, withN.VertexCount);
    }

    [Fact]
    public void InvalidTensorsAreRejectedWithTheirName()
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.zeros(4, 3, dtype: ScalarType.Float64);
        var f = torch.tensor(new long[] { 0, 1, 2 }, new long[] { 1, 3 });
        var nan = v.clone();
        nan[2, 1] = double.NaN;
        var e1 = Assert.Throws<ArgumentException>(() => new Mesh(nan, f));
        Assert.Contains("vertices", e1.Message);
        Assert.Contains("row 2", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => new Mesh(v, torch.tensor(new long[] { 0, 1, 4 }, new long[] { 1, 3 })));
        Assert.Contains("[0, 4)", e2.Message);
        Assert.Throws<ArgumentException>(() => new Mesh(v, torch.tensor(new long[] { -1, 1, 2 }, new long[] { 1, 3 })));
        Assert.Throws<ArgumentException>(() => new Mesh(torch.zeros(4, 2), f));
        Assert.Throws<ArgumentException>(() => new Mesh(v, f.to(ScalarType.Float64)));
        var e3 = Assert.Throws<ArgumentException>(() => new Mesh(v, f, colors: torch.zeros(3, 3, dtype: ScalarType.Float64)));
        Assert.Contains("colors", e3.Message);
        var e4 = Assert.Throws<ArgumentException>(() => new Mesh(v, f, normals: torch.zeros(4, 3, dtype: ScalarType.Float32)));
        Assert.Contains("normals", e4.Message);
        var inf = v.clone();
        inf[0, 0] = double.PositiveInfinity;
        Assert.Throws<ArgumentException>(() => new Mesh(v, f, colors: inf));
    }

    [Fact]
    public void DegenerateFacesAreRemovedOnRequest()
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.tensor(new double[] { 0, 0, 0, 1, 0, 0, 0, 1, 0, 2, 0, 0 }, new long[] { 4, 3 });
        // a good face, a repeated index, and a zero-area (collinear) face
        var f = torch.tensor(new long[] { 0, 1, 2, 0, 0, 1, 0, 1, 3 }, new long[] { 3, 3 });
        using var m = new Mesh(v, f);
        using var clean = m.WithoutDegenerateFaces();
        Assert.Equal(1, clean.FaceCount);
        Assert.Equal(new long[] { 0, 1, 2 }, clean.Faces.data<long>().ToArray());
        using var empty = Mesh.Empty();
        Assert.True(empty.IsEmpty);
        using var stillEmpty = empty.WithoutDegenerateFaces();
        Assert.Equal(0, stillEmpty.VertexCount);
        Assert.Equal(0, empty.ComputeVertexNormals().shape[0]);
    }
}
