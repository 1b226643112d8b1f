using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Rendering;

/// <summary>Gaussian sets and meshes with known parameters for the renderer tests.</summary>
internal static class RenderTestData
{
    public static readonly double[] Box = { -0.5, -0.5, -0.5, 1, 1, 1 };
    public const double ShC0 = 0.28209479177387814;

    /// <summary>
    /// Isotropic Gaussians with exactly the given world positions, scales (no 3D filter), opacities and RGB colours:
    /// exp activation with scaling bias 1 (so raw scaling = log s), raw rotation 0 (identity), raw opacity = logit(o) −
    /// logit(0.1), DC = (colour − 0.5)/C0.
    /// </summary>
    public static Gaussians Isotropic(double[][] positions, double[] scales, double[] opacities, double[][] colors, ScalarType dtype = ScalarType.Float64)
    {
        int n = positions.Length;
        var g = new Gaussians(Box, 0, 0.0, 1.0, 0.1, GaussianScalingActivation.Exp);
        using var scope = torch.NewDisposeScope();
        var xyz = torch.tensor(positions.SelectMany(p => new[] { p[0] + 0.5, p[1] + 0.5, p[2] + 0.5 }).ToArray(), new long[] { n, 3 }, ScalarType.Float64);
        var fdc = torch.tensor(colors.SelectMany(c => c.Select(v => (v - 0.5) / ShC0)).ToArray(), new long[] { n, 1, 3 }, ScalarType.Float64);
        var sc = torch.tensor(scales.SelectMany(s => Enumerable.Repeat(Math.Log(s), 3)).ToArray(), new long[] { n, 3 }, ScalarType.Float64);
        var rot = torch.zeros(n, 4, dtype: ScalarType.Float64);
        double logit01 = Math.Log(0.1 / 0.9);
        var op = torch.tensor(opacities.Select(o => Math.Log(o / (1 - o)) - logit01).ToArray(), new long[] { n, 1 }, ScalarType.Float64);
        g.SetParameters(xyz.to(dtype), fdc.to(dtype), sc.to(dtype), rot.to(dtype), op.to(dtype));
        return g;
    }

    /// <summary>
    /// <paramref name="count"/> Gaussians like a decoded TRELLIS object: centres near a sphere of radius 0.35 (jittered),
    /// softplus scales around 0.004–0.012 with TRELLIS's biases (3D filter 9e-4, scaling bias 4e-3, opacity bias 0.1),
    /// random rotations, mostly opaque, colours in [0, 1]. Seeded by <paramref name="seed"/>.
    /// </summary>
    public static Gaussians TrellisLike(int count, long seed, ScalarType dtype = ScalarType.Float32)
    {
        var g = new Gaussians(Box, 0, 9e-4, 4e-3, 0.1, GaussianScalingActivation.Softplus);
        using var scope = torch.NewDisposeScope();
        var gen = new Generator((ulong)seed);
        var dir = torch.nn.functional.normalize(torch.randn(count, 3, dtype: ScalarType.Float64, generator: gen), p: 2, dim: 1);
        var radius = 0.35 + 0.03 * torch.randn(count, 1, dtype: ScalarType.Float64, generator: gen);
        var xyz = dir * radius + 0.5;
        var fdc = (torch.rand(count, 1, 3, dtype: ScalarType.Float64, generator: gen) - 0.5) / ShC0;
        var sc = 0.5 * torch.randn(count, 3, dtype: ScalarType.Float64, generator: gen);
        var rot = 0.5 * torch.randn(count, 4, dtype: ScalarType.Float64, generator: gen);
        var op = 2 + 2 * torch.randn(count, 1, dtype: ScalarType.Float64, generator: gen);
        g.SetParameters(xyz.to(dtype), fdc.to(dtype), sc.to(dtype), rot.to(dtype), op.to(dtype));
        return g;
    }

    /// <summary>Whether two tensors have the same shape and bit-identical values (NaN-free).</summary>
    public static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>The unit cube [-0.5, 0.5]³ as 12 triangles (8 shared vertices), optionally with one colour for every vertex.</summary>
    public static Mesh UnitCube(ScalarType dtype = ScalarType.Float64, double[]? color = null, double half = 0.5)
    {
        using var scope = torch.NewDisposeScope();
        var v = new List<double>();
        for (int i = 0; i < 8; i++) { v.Add((i & 1) == 0 ? -half : half); v.Add((i & 2) == 0 ? -half : half); v.Add((i & 4) == 0 ? -half : half); }
        long[] f =
        {
            0, 2, 1, 1, 2, 3, // z = -h
            4, 5, 6, 5, 7, 6, // z = +h
            0, 1, 4, 1, 5, 4, // y = -h
            2, 6, 3, 3, 6, 7, // y = +h
            0, 4, 2, 2, 4, 6, // x = -h
            1, 3, 5, 3, 7, 5, // x = +h
        };
        var vt = torch.tensor(v.ToArray(), new long[] { 8, 3 }, ScalarType.Float64).to(dtype);
        var ft = torch.tensor(f, new long[] { 12, 3 });
        var ct = color is null ? null : torch.tensor(Enumerable.Range(0, 8).SelectMany(_ => color).ToArray(), new long[] { 8, 3 }, ScalarType.Float64).to(dtype);
        return new Mesh(vt, ft, ct);
    }
}
