using MdtDist.Trellis.Modules;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Tests.Modules;

/// <summary>The bfloat16 fast paths compute what TRELLIS's float32 round trips compute.</summary>
public class BFloat16PathTests
{
    // Activations as in a flow block: rows of width 1024 with a per-row offset and spread, so mean and variance matter.
    private static Tensor Rows(Generator g, long rows = 256, long width = 1024) =>
        (torch.randn(new[] { rows, width }, generator: g) * (torch.rand(new[] { rows, 1L }, generator: g) * 4 + 0.1)
         + torch.randn(new[] { rows, 1L }, generator: g) * 3).to(ScalarType.BFloat16);

    [Theory]
    [InlineData(false, ScalarType.Float32)]   // norm1 / norm3 (no affine)
    [InlineData(true, ScalarType.Float32)]    // norm2 with float32 weights (SetTorsoDType keeps norms in float32)
    [InlineData(true, ScalarType.BFloat16)]   // norm2 of a model built in bfloat16
    public void BFloat16LayerNormMatchesTheFloat32RoundTrip(bool affine, ScalarType weightDtype)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(41);
        var x = Rows(g);
        using var norm = new LayerNorm32(1024, affine, 1e-6, weightDtype, null);
        if (affine)
        {
            using var noGrad = torch.no_grad();
            foreach (var p in norm.parameters()) p.copy_(torch.randn(p.shape, generator: g) * 0.3 + 1);
        }
        var w = affine ? norm.parameters().First() : null;
        var b = affine ? norm.parameters().Last() : null;
        Assert.True(Precision.NativeReducedLayerNorm(x, w, b));
        var got = norm.forward(x);
        Assert.Equal(ScalarType.BFloat16, got.dtype);
        var want = F.layer_norm(x.to(ScalarType.Float32), new long[] { 1024 }, w?.to(ScalarType.Float32), b?.to(ScalarType.Float32), 1e-6)
            .to(ScalarType.BFloat16);
        // Both compute mean, variance and the affine map in float32 and round once to bfloat16. Their float32 values may
        // differ by a few float32 ulps (reduction order), which moves the bfloat16 rounding only for values within those
        // ulps of a rounding midpoint: then the two differ by exactly one bfloat16 ulp (≤ 2^-7·|value|; the bar allows
        // two, |value|/64), and such values are a fraction ≈ 2·k/2^16 of all (k ≤ 8 float32 ulps gives < 3e-4; the
        // bar is 1e-3).
        var diff = (got.to(ScalarType.Float64) - want.to(ScalarType.Float64)).abs();
        var bound = want.to(ScalarType.Float64).abs() / 64 + 1e-30;
        Assert.True((diff <= bound).all().item<bool>(), $"max diff {diff.max().item<double>()}");
        double fraction = (diff > 0).to(ScalarType.Float64).mean().item<double>();
        Assert.True(fraction < 1e-3, $"{fraction} of the elements differ from the float32 round trip");
    }

    [Fact]
    public void Float32AndFloat64LayerNormsKeepTheirPath()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(42);
        var x = torch.randn(new long[] { 8, 64 }, generator: g);
        Assert.False(Precision.NativeReducedLayerNorm(x, null, null));
        Assert.False(Precision.NativeReducedLayerNorm(x.to(ScalarType.Float64), null, null));
        Assert.False(Precision.NativeReducedLayerNorm(x.to(ScalarType.Float16), null, null));
        using var norm = new LayerNorm32(64, false, 1e-6, ScalarType.Float32, null);
        Assert.True((norm.forward(x) == F.layer_norm(x, new long[] { 64 }, eps: 1e-6)).all().item<bool>());
    }
}

public class FusedSdpaTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.Float16, true)]
    public void HeadMajorCopiesGiveTheSameValuesAsTheViews(ScalarType dtype, bool masked)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(44);
        // the block's layout: q, k, v views of one [B, L, 3, H, D] projection, permuted to [B, H, L, D]
        var qkv = torch.randn(new long[] { 2, 300, 3, 4, 64 }, generator: g).to(dtype);
        var parts = qkv.unbind(2).Select(t => t.permute(0, 2, 1, 3)).ToArray();
        var mask = masked ? (torch.rand(new long[] { 2, 1, 1, 300 }, generator: g) > 0.3) : null;
        var viaViews = F.scaled_dot_product_attention(parts[0], parts[1], parts[2], mask);
        var got = DenseAttention.FusedSdpa(parts[0], parts[1], parts[2], mask);
        Assert.Equal(dtype, got.dtype);
        // The same values in another memory layout: the kernel accumulates in float32 and rounds each output once. A kernel
        // that blocks differently for another stride may change the float32 sums by a few ulps, which moves an output's
        // rounding by at most one unit of the 16-bit format (≤ 2^-7·|y| for bfloat16, 2^-10·|y| for float16); outputs near 0
        // (a weighted mean of v with cancelling terms) get that unit at the scale of the largest |v| times 2^-10.
        var diff = (got.to(ScalarType.Float64) - viaViews.to(ScalarType.Float64)).abs();
        double ulp = dtype == ScalarType.BFloat16 ? Math.Pow(2, -7) : Math.Pow(2, -10);
        var bound = viaViews.to(ScalarType.Float64).abs() * ulp + ulp * Math.Pow(2, -10) * qkv.abs().max().to(ScalarType.Float64).item<double>();
        Assert.True((diff <= bound).all().item<bool>(), $"{dtype}: max diff {diff.max().item<double>()}");
    }
}
