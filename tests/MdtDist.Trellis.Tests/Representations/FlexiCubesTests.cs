using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public class FlexiCubesTests
{
    [Fact]
    public void SphereGivesAClosedOutwardSurfaceOnTheSphere()
    {
        using var scope = torch.NewDisposeScope();
        const int res = 16;
        const double r = 0.3;
        using var fc = MeshTestShapes.Sphere(res, r);
        using var result = FlexiCubes.Extract(fc);
        Assert.True(result.Success);
        var v = result.Vertices.data<double>().ToArray();
        var f = result.Faces.data<long>().ToArray();

        // watertight 2-manifold: every edge in exactly two faces
        Assert.All(MeshTestShapes.EdgeUse(f).Values, c => Assert.Equal(2, c));
        // outward winding: the enclosed volume is positive and close to the ball's. A polyhedron inscribed
        // between crossings on a grid of spacing h = 1/16 loses O(h²/r) of the radius: 4/3 π r³ within 5 %.
        double vol = MeshTestShapes.SignedVolume(v, f);
        Assert.InRange(vol, 0.95 * 4.0 / 3 * Math.PI * r * r * r, 1.0 * 4.0 / 3 * Math.PI * r * r * r);
        // each dual vertex is a mean of edge crossings of the exact distance; linear interpolation of |p| − r along
        // an edge of length h errs by at most h²/(8r) ≈ 2e-3, and the mean of points on the sphere lies inside it by
        // at most h²/(2r) ≈ 6.5e-3 (chord sagitta of a cube-sized patch)
        for (int i = 0; i < v.Length; i += 3)
        {
            double d = Math.Sqrt(v[i] * v[i] + v[i + 1] * v[i + 1] + v[i + 2] * v[i + 2]);
            Assert.InRange(d, r - 0.0085, r + 0.0025);
        }
        // colours: the red channel is (x + 1) / 2, a linear function, which every interpolation step reproduces exactly
        var c = result.VertexAttributes!.data<double>().ToArray();
        for (int i = 0; i < v.Length / 3; i++)
        {
            Assert.Equal((v[3 * i] + 1) / 2, c[6 * i], 1e-12);
            Assert.Equal(0.5, c[6 * i + 1], 15);
        }
        // face normals point away from the centre
        var n = result.FaceNormals.data<double>().ToArray();
        for (int i = 0; i < f.Length / 3; i++)
        {
            double cx = (v[3 * f[3 * i]] + v[3 * f[3 * i + 1]] + v[3 * f[3 * i + 2]]) / 3;
            double cy = (v[3 * f[3 * i] + 1] + v[3 * f[3 * i + 1] + 1] + v[3 * f[3 * i + 2] + 1]) / 3;
            double cz = (v[3 * f[3 * i] + 2] + v[3 * f[3 * i + 1] + 2] + v[3 * f[3 * i + 2] + 2]) / 3;
            Assert.True(n[3 * i] * cx + n[3 * i + 1] * cy + n[3 * i + 2] * cz > 0, $"face {i} points inwards");
        }
    }

    [Fact]
    public void TrainingModeAddsACentreVertexPerQuad()
    {
        using var scope = torch.NewDisposeScope();
        using var fc = MeshTestShapes.Sphere(12, 0.255);
        using var eval = FlexiCubes.Extract(fc);
        using var train = FlexiCubes.Extract(fc, training: true);
        long quads = eval.Faces.shape[0] / 2;
        Assert.Equal(4 * quads, train.Faces.shape[0]);
        Assert.Equal(eval.Vertices.shape[0] + quads, train.Vertices.shape[0]);
        Assert.True(train.Vertices[..(int)eval.Vertices.shape[0]].eq(eval.Vertices).all().item<bool>());
        Assert.All(MeshTestShapes.EdgeUse(train.Faces.data<long>().ToArray()).Values, c => Assert.Equal(2, c));
        Assert.NotNull(train.RegLoss);
        Assert.Null(eval.RegLoss);
        // exact sdf, averaged per vertex from identical corner values: the consistency loss is 0 up to the rounding
        // of a mean of equal values (1 ulp of values ≤ 1, squared: < 1e-30)
        Assert.InRange(train.ConsistencyLoss!.item<double>(), 0.0, 1e-30);
    }

    [Fact]
    public void FloatAndDoubleGiveTheSameTopology()
    {
        using var scope = torch.NewDisposeScope();
        using var f64 = MeshTestShapes.Sphere(12, 0.27, 0.013);
        using var f32 = MeshTestShapes.Sphere(12, 0.27, 0.013, dtype: ScalarType.Float32);
        using var a = FlexiCubes.Extract(f64);
        using var b = FlexiCubes.Extract(f32);
        Assert.Equal(ScalarType.Float32, b.Vertices.dtype);
        Assert.True(a.Faces.eq(b.Faces).all().item<bool>());
        // float32 rounding of coordinates ≤ 0.5: a few ulps (6e-8 each)
        Assert.True((a.Vertices - b.Vertices.to(ScalarType.Float64)).abs().max().item<double>() < 1e-6);
    }

    [Fact]
    public void NoSurfaceGivesAnEmptyResult()
    {
        using var scope = torch.NewDisposeScope();
        // everything outside: the sphere lies outside the box
        using var outside = MeshTestShapes.Sphere(6, 0.1, centerX: 5);
        foreach (bool training in new[] { false, true })
        {
            using var r = FlexiCubes.Extract(outside, training);
            Assert.False(r.Success);
            Assert.Equal(new long[] { 0, 3 }, r.Vertices.shape);
            Assert.Equal(new long[] { 0, 3 }, r.Faces.shape);
            Assert.Equal(new long[] { 0, 6 }, r.VertexAttributes!.shape);
            using var mesh = r.ToMesh();
            Assert.True(mesh.IsEmpty);
        }
        // a sample without cubes
        using var none = FlexiCubesInputs.FromFeatures(torch.zeros(0, 3, dtype: ScalarType.Int64), torch.zeros(0, 53, dtype: ScalarType.Float64), 8, useColor: false);
        using var e = FlexiCubes.Extract(none);
        Assert.False(e.Success);
        Assert.Null(e.VertexAttributes);
    }

    [Fact]
    public void ToMeshTakesTheColourChannelsAndAddsUnitNormals()
    {
        using var scope = torch.NewDisposeScope();
        using var fc = MeshTestShapes.Sphere(10, 0.31);   // no grid vertex exactly on the sphere (sdf 0 makes zero-length faces)
        using var r = FlexiCubes.Extract(fc);
        using var mesh = r.ToMesh();
        Assert.True(mesh.Colors!.eq(r.VertexAttributes![.., 0..3]).all().item<bool>());
        var len = mesh.Normals!.norm(1);
        Assert.True((len - 1).abs().max().item<double>() < 1e-12);
        // vertex normals of a sphere point outwards
        var dots = (mesh.Normals * mesh.Vertices).sum(1);
        Assert.True(dots.gt(0).all().item<bool>(), $"min n·v {dots.min().item<double>()}, {dots.le(0).sum().item<long>()} of {dots.shape[0]}");
    }

    [Fact]
    public void BadArgumentsAreRejected()
    {
        using var fc = MeshTestShapes.Sphere(4, 0.3);
        Assert.Throws<ArgumentNullException>(() => FlexiCubes.Extract(null!));
        var ex = Assert.Throws<ArgumentException>(() => FlexiCubes.Extract(fc, weightScale: 0));
        Assert.Contains("weightScale", ex.Message);
    }
}
