using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Representations;

public class GaussiansTests
{
    private static readonly double[] Box = { -0.5, -0.5, -0.5, 1, 1, 1 };

    [Fact]
    public void BiasesMatchTheirDefinitions()
    {
        using var soft = new Gaussians(Box, 0, 9e-4, 4e-3, 0.1, GaussianScalingActivation.Softplus);
        // softplus(ScaleBias) == scaling_bias, i.e. log(1 + exp(b')) == b
        Assert.Equal(4e-3, Math.Log(1 + Math.Exp(soft.ScaleBias)), 15);
        Assert.Equal(0.1, 1 / (1 + Math.Exp(-soft.OpacityLogitBias)), 15);
        using var exp = new Gaussians(Box, 0, 0, 0.01, 0.3, GaussianScalingActivation.Exp);
        Assert.Equal(0.01, Math.Exp(exp.ScaleBias), 15);
        Assert.Equal(0.3, 1 / (1 + Math.Exp(-exp.OpacityLogitBias)), 15);
    }

    [Fact]
    public void GettersFollowTheirFormulas()
    {
        using var scope = torch.NewDisposeScope();
        var aabb = new[] { -1.0, 0.5, 2.0, 2.0, 3.0, 0.5 };
        using var gs = new Gaussians(aabb, 0, 0.02, 0.05, 0.2, GaussianScalingActivation.Softplus);
        var gen = new Generator(3);
        var xyz = torch.rand(6, 3, dtype: ScalarType.Float64, generator: gen);
        var fdc = torch.randn(6, 1, 3, dtype: ScalarType.Float64, generator: gen);
        var sc = torch.randn(6, 3, dtype: ScalarType.Float64, generator: gen);
        var rot = torch.randn(6, 4, dtype: ScalarType.Float64, generator: gen);
        var op = torch.randn(6, 1, dtype: ScalarType.Float64, generator: gen);
        gs.SetParameters(xyz, fdc, sc, rot, op);
        Assert.Equal(6, gs.Count);

        var xs = xyz.data<double>().ToArray();
        var gx = gs.GetXyz().data<double>().ToArray();
        for (int i = 0; i < 18; i++) Assert.Equal(xs[i] * aabb[3 + i % 3] + aabb[i % 3], gx[i], 14);

        var s = sc.data<double>().ToArray();
        var gsc = gs.GetScaling().data<double>().ToArray();
        for (int i = 0; i < 18; i++)
        {
            double a = Math.Log(1 + Math.Exp(s[i] + gs.ScaleBias));
            Assert.Equal(Math.Sqrt(a * a + 0.02 * 0.02), gsc[i], 14);
        }

        var r = rot.data<double>().ToArray();
        var gr = gs.GetRotation().data<double>().ToArray();
        for (int i = 0; i < 6; i++)
        {
            var q = new[] { r[4 * i] + 1, r[4 * i + 1], r[4 * i + 2], r[4 * i + 3] };
            double n = Math.Sqrt(q.Sum(v => v * v));
            for (int k = 0; k < 4; k++) Assert.Equal(q[k] / n, gr[4 * i + k], 14);
        }

        var o = op.data<double>().ToArray();
        var go = gs.GetOpacity().data<double>().ToArray();
        for (int i = 0; i < 6; i++) Assert.Equal(1 / (1 + Math.Exp(-(o[i] + Math.Log(0.2 / 0.8)))), go[i], 14);

        using var f = gs.GetFeatures();
        Assert.True(f.eq(fdc).all().item<bool>());
    }

    [Fact]
    public void TheSetOutlivesTheScopeItWasFilledIn()
    {
        using var gs = new Gaussians(Box);
        using (var scope = torch.NewDisposeScope())
        {
            gs.SetParameters(torch.zeros(2, 3, dtype: ScalarType.Float64), torch.zeros(2, 1, 3, dtype: ScalarType.Float64),
                torch.zeros(2, 3, dtype: ScalarType.Float64), torch.zeros(2, 4, dtype: ScalarType.Float64), torch.zeros(2, 1, dtype: ScalarType.Float64));
        }
        using var x = gs.GetXyz();
        Assert.Equal(-0.5, x.max().item<double>());
        using var r = gs.GetRotation();
        Assert.Equal(new[] { 1.0, 0, 0, 0, 1, 0, 0, 0 }, r.data<double>().ToArray());
    }

    [Fact]
    public void HalfPrecisionPositionsArePromotedLikeTheFloat32Aabb()
    {
        using var gs = new Gaussians(Box);
        using var scope = torch.NewDisposeScope();
        var h = torch.zeros(2, 3, dtype: ScalarType.Float16);
        gs.SetParameters(h, torch.zeros(2, 1, 3, dtype: ScalarType.Float16), h, torch.zeros(2, 4, dtype: ScalarType.Float16), torch.zeros(2, 1, dtype: ScalarType.Float16));
        Assert.Equal(ScalarType.Float32, gs.GetXyz().dtype);
        Assert.Equal(ScalarType.Float16, gs.GetScaling().dtype);
    }

    [Fact]
    public void InvalidArgumentsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new Gaussians(new double[] { 0, 0, 0 }));
        Assert.Throws<ArgumentException>(() => new Gaussians(Box, shDegree: 3));
        Assert.Throws<ArgumentException>(() => new Gaussians(Box, scalingBias: 0));
        Assert.Throws<ArgumentException>(() => new Gaussians(Box, opacityBias: 1));
        Assert.Throws<ArgumentException>(() => new Gaussians(Box, minimumKernelSize: -1));
        using var gs = new Gaussians(Box);
        Assert.Throws<InvalidOperationException>(() => gs.GetXyz());
        using var scope = torch.NewDisposeScope();
        var ok3 = torch.zeros(4, 3, dtype: ScalarType.Float64);
        var ex = Assert.Throws<ArgumentException>(() => gs.SetParameters(ok3, torch.zeros(4, 3, dtype: ScalarType.Float64), ok3,
            torch.zeros(4, 4, dtype: ScalarType.Float64), torch.zeros(4, 1, dtype: ScalarType.Float64)));
        Assert.Contains("featuresDc must be [4, 1, 3]; found [4, 3]", ex.Message);
        var ex2 = Assert.Throws<ArgumentException>(() => gs.SetParameters(ok3, torch.zeros(4, 1, 3, dtype: ScalarType.Float64), ok3,
            torch.zeros(4, 4, dtype: ScalarType.Float32), torch.zeros(4, 1, dtype: ScalarType.Float64)));
        Assert.Contains("rotation has dtype Float32", ex2.Message);
        Assert.False(gs.HasParameters);
    }
}
