using System.Text;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public sealed class GaussianPlyTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mdtdist-ply-tests-");

    public void Dispose() => _dir.Delete(recursive: true);

    private static Gaussians Random(int g, long seed, GaussianScalingActivation act = GaussianScalingActivation.Softplus)
    {
        var gen = new Generator((ulong)seed);
        var gs = new Gaussians(new[] { -0.5, -0.5, -0.5, 1, 1, 1 }, 0, 9e-4, 4e-3, 0.1, act);
        using var scope = torch.NewDisposeScope();
        gs.SetParameters(
            torch.rand(g, 3, dtype: ScalarType.Float64, generator: gen),
            torch.randn(g, 1, 3, dtype: ScalarType.Float64, generator: gen),
            torch.randn(g, 3, dtype: ScalarType.Float64, generator: gen),
            torch.randn(g, 4, dtype: ScalarType.Float64, generator: gen) * 0.5,
            torch.randn(g, 1, dtype: ScalarType.Float64, generator: gen));
        return gs;
    }

    [Fact]
    public void RoundTripGivesTheTransformedGaussianBack()
    {
        using var scope = torch.NewDisposeScope();
        using var gs = Random(37, 5);
        var path = Path.Combine(_dir.FullName, "a.ply");
        GaussianPly.Save(path, gs);
        var data = GaussianPly.Read(path);
        Assert.Equal(37, data.Count);
        Assert.Equal(GaussianPly.PropertyNames, data.Properties);
        var table = data.ToTensor().to(ScalarType.Float64); // [G, 17]

        // positions: (x, y, z) -> (x, -z, y) of get_xyz
        var xyz = gs.GetXyz();
        var expectXyz = torch.stack(new[] { xyz[.., 0], -xyz[.., 2], xyz[.., 1] }, 1);
        AssertClose(expectXyz, table[.., 0..3], 1e-7);
        Assert.Equal(0.0, table[.., 3..6].abs().max().item<double>());
        AssertClose(gs.FeaturesDc.reshape(37, 3), table[.., 6..9], 1e-7);
        // opacity: the logit of get_opacity, i.e. _opacity + logit(bias)
        AssertClose(gs.Opacity + Math.Log(0.1 / 0.9), table[.., 9..10], 1e-6);
        AssertClose(gs.GetScaling().log(), table[.., 10..13], 1e-6);
        // rotation: a unit quaternion whose matrix is T * R(q)
        var q = table[.., 13..17];
        AssertClose(torch.ones(37, dtype: ScalarType.Float64), q.square().sum(1).sqrt(), 1e-6);
        var t = torch.tensor(new double[] { 1, 0, 0, 0, 0, -1, 0, 1, 0 }, new long[] { 3, 3 }, dtype: ScalarType.Float64);
        var expectMat = torch.matmul(t, QuatToMatrix(gs.GetRotation()));
        AssertClose(expectMat, QuatToMatrix(q), 1e-6);
        // canonical form: the largest-magnitude component is positive
        var idx = q.abs().argmax(1, keepdim: true);
        Assert.True(q.gather(1, idx).gt(0).all().item<bool>());
    }

    [Fact]
    public void WithoutTransformTheRawValuesAreWritten()
    {
        using var scope = torch.NewDisposeScope();
        using var gs = Random(5, 6, GaussianScalingActivation.Exp);
        var data = GaussianPly.Parse(GaussianPly.ToBytes(gs, null));
        var table = data.ToTensor().to(ScalarType.Float64);
        AssertClose(gs.GetXyz(), table[.., 0..3], 1e-7);
        AssertClose(gs.BiasedRotation(), table[.., 13..17], 1e-6);
        // exp activation: scale = log(sqrt(exp(s + log b)^2 + k^2))
        var s = gs.Scaling;
        var expect = torch.log(torch.sqrt(torch.exp(2 * (s + Math.Log(4e-3))) + 9e-4 * 9e-4));
        AssertClose(expect, table[.., 10..13], 1e-6);
    }

    [Fact]
    public void ReadsTheFileTrellisWrote()
    {
        var path = Path.Combine(GoldenParityTests.BundledDirectory, "gs_ply.ply");
        var data = GaussianPly.Read(path);
        Assert.Equal(160, data.Count);
        Assert.Equal(17, data.Properties.Count);
        using var golden = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "gs_ply.json"));
        using var t = data.ToTensor().to(ScalarType.Float64);
        Assert.True(golden["out.vertex"].eq(t).all().item<bool>());
        Assert.Equal((float)golden["out.vertex"][3, 16].item<double>(), data["rot_3"][3]);
    }

    [Fact]
    public void TruncatedFileIsRejected()
    {
        using var gs = Random(4, 7);
        var bytes = GaussianPly.ToBytes(gs, GaussianPly.DefaultTransform);
        var ex = Assert.Throws<InvalidDataException>(() => GaussianPly.Parse(bytes.AsSpan(0, bytes.Length - 3), "t.ply"));
        Assert.Contains("truncated", ex.Message);
        Assert.Contains("t.ply", ex.Message);
        int headerEnd = Encoding.ASCII.GetString(bytes).IndexOf("end_header", StringComparison.Ordinal);
        var ex2 = Assert.Throws<InvalidDataException>(() => GaussianPly.Parse(bytes.AsSpan(0, headerEnd + 4)));
        Assert.Contains("end_header", ex2.Message);
        var ex3 = Assert.Throws<InvalidDataException>(() => GaussianPly.Parse(bytes.Concat(new byte[] { 1, 2 }).ToArray()));
        Assert.Contains("unexpected bytes", ex3.Message);
    }

    [Theory]
    [InlineData("format binary_little_endian 1.0", "format ascii 1.0", "format 'ascii 1.0'")]
    [InlineData("format binary_little_endian 1.0", "format binary_big_endian 1.0", "binary_big_endian")]
    [InlineData("ply\n", "plx\n", "expected 'ply'")]
    [InlineData("property float opacity", "property double opacity", "type 'double'")]
    [InlineData("property float rot_3\n", "", "missing Gaussian properties: rot_3")]
    [InlineData("element vertex 3", "element face 3", "element 'face'")]
    [InlineData("element vertex 3", "element vertex -3", "not a non-negative integer")]
    [InlineData("element vertex 3", "element vertex 9000000000000000000", "more than 2^63")]
    [InlineData("element vertex 3", "element vertex 4", "truncated: 4 vertices need 272 bytes of data, found 204")]
    [InlineData("property float x\n", "property float x\nproperty float x\n", "declared twice")]
    [InlineData("end_header", "bogus line\nend_header", "unexpected header line 'bogus line'")]
    public void WrongHeaderIsRejectedWithAClearMessage(string find, string replace, string expected)
    {
        using var gs = Random(3, 8);
        var bytes = GaussianPly.ToBytes(gs, GaussianPly.DefaultTransform);
        var text = Encoding.ASCII.GetString(bytes);
        int end = text.IndexOf("end_header\n", StringComparison.Ordinal) + "end_header\n".Length;
        var header = text[..end];
        Assert.Contains(find, header);
        var bad = Encoding.ASCII.GetBytes(header.Replace(find, replace)).Concat(bytes.Skip(end)).ToArray();
        var ex = Assert.Throws<InvalidDataException>(() => GaussianPly.Parse(bad));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void HeaderCommentsAndExtraFloatPropertiesAreAccepted()
    {
        using var gs = Random(2, 9);
        var bytes = GaussianPly.ToBytes(gs, GaussianPly.DefaultTransform);
        var text = Encoding.ASCII.GetString(bytes);
        int end = text.IndexOf("end_header\n", StringComparison.Ordinal) + "end_header\n".Length;
        // one extra property at the end: 4 more bytes per vertex
        var header = text[..end].Replace("format binary_little_endian 1.0\n", "format binary_little_endian 1.0\ncomment made by a test\n")
            .Replace("property float rot_3\n", "property float rot_3\nproperty float extra\n");
        var body = new List<byte>();
        for (int v = 0; v < 2; v++)
        {
            body.AddRange(bytes.Skip(end + v * 68).Take(68));
            body.AddRange(BitConverter.GetBytes(42f + v));
        }
        var data = GaussianPly.Parse(Encoding.ASCII.GetBytes(header).Concat(body).ToArray());
        Assert.Equal(18, data.Properties.Count);
        Assert.Equal(new[] { 42f, 43f }, data["extra"]);
        var reference = GaussianPly.Parse(bytes);
        Assert.True(reference.ToTensor().eq(data.ToTensor()).all().item<bool>());
        Assert.Throws<ArgumentException>(() => data["nope"]);
    }

    [Fact]
    public void SaveReplacesAtomicallyAndLeavesNoTemporaryFiles()
    {
        using var a = Random(3, 10);
        using var b = Random(6, 11);
        var path = Path.Combine(_dir.FullName, "out.ply");
        GaussianPly.Save(path, a);
        GaussianPly.Save(path, b);
        Assert.Equal(6, GaussianPly.Read(path).Count);
        Assert.Equal(new[] { "out.ply" }, _dir.GetFiles().Select(f => f.Name));
        Assert.Throws<ArgumentException>(() => GaussianPly.Save(Path.Combine(_dir.FullName, "no", "such", "x.ply"), a));
        Assert.Throws<ArgumentException>(() => GaussianPly.Save(path, a, new double[2, 3]));
    }

    [Fact]
    public void MatrixToQuaternionIsCanonicalAndInvertsQuaternionToMatrix()
    {
        Span<double> m = stackalloc double[9];
        Span<double> q = stackalloc double[4];
        // identity
        GaussianPly.MatrixToQuaternion(new double[] { 1, 0, 0, 0, 1, 0, 0, 0, 1 }, q);
        Assert.Equal(new[] { 1.0, 0, 0, 0 }, q.ToArray());
        // 180 degrees about x: w = 0 exactly and x is the largest component
        GaussianPly.MatrixToQuaternion(new double[] { 1, 0, 0, 0, -1, 0, 0, 0, -1 }, q);
        Assert.Equal(new[] { 0.0, 1, 0, 0 }, q.ToArray());
        // a quaternion and its negation give the same matrix and the same canonical quaternion
        var rnd = new Random(3);
        for (int i = 0; i < 200; i++)
        {
            var p = new[] { rnd.NextDouble() * 2 - 1, rnd.NextDouble() * 2 - 1, rnd.NextDouble() * 2 - 1, rnd.NextDouble() * 2 - 1 };
            var n = Math.Sqrt(p.Sum(v => v * v));
            GaussianPly.QuaternionToMatrix(p, m);
            GaussianPly.MatrixToQuaternion(m, q);
            var back = q.ToArray();
            int k = Enumerable.Range(0, 4).MaxBy(j => Math.Abs(p[j]));
            double s = Math.Sign(p[k]) / n;
            for (int j = 0; j < 4; j++) Assert.Equal(p[j] * s, back[j], 1e-12);
            Assert.True(back[k] > 0);
            GaussianPly.QuaternionToMatrix(p.Select(v => -v).ToArray(), m);
            GaussianPly.MatrixToQuaternion(m, q);
            for (int j = 0; j < 4; j++) Assert.Equal(back[j], q[j], 1e-12);
        }
    }

    private static Tensor QuatToMatrix(Tensor q)
    {
        q = torch.nn.functional.normalize(q, dim: 1);
        var (w, x, y, z) = (q[.., 0], q[.., 1], q[.., 2], q[.., 3]);
        var rows = new[]
        {
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        };
        return torch.stack(rows, 1).reshape(-1, 3, 3);
    }

    private static void AssertClose(Tensor expected, Tensor actual, double tol)
    {
        Assert.Equal(expected.shape, actual.shape);
        var e = expected.to(ScalarType.Float64);
        double err = ((e - actual.to(ScalarType.Float64)).abs() / (1 + e.abs())).max().item<double>();
        Assert.True(err <= tol, $"max error |diff| / (1 + |expected|) {err:E3} > {tol:E1}");
    }
}
