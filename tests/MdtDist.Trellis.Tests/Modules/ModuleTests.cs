using MdtDist.TestSupport;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Modules;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using MdtDist.Trellis.Tests.Models;

namespace MdtDist.Trellis.Tests.Modules;

public class ModuleTests
{
    private static Tensor Randn(params long[] shape) => torch.randn(shape, dtype: ScalarType.Float64);

    [Fact]
    public void PatchifyPutsInPatchOffsetsInTheChannelAxisAndUnpatchifyInvertsIt()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(2, 3, 4, 6, 2);
        var p = Spatial.Patchify3d(x, 2);
        Assert.Equal(new long[] { 2, 24, 2, 3, 1 }, p.shape);
        var xa = x.data<double>().ToArray();
        var pa = p.contiguous().data<double>().ToArray();
        for (int b = 0; b < 2; b++)
        for (int c = 0; c < 3; c++)
        for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++) for (int k = 0; k < 2; k++)
        for (int X = 0; X < 2; X++) for (int Y = 0; Y < 3; Y++)
        {
            int Z = 0;
            int ch = c * 8 + (i * 2 + j) * 2 + k;
            double got = pa[(((b * 24 + ch) * 2 + X) * 3 + Y) * 1 + Z];
            double want = xa[(((b * 3 + c) * 4 + 2 * X + i) * 6 + 2 * Y + j) * 2 + 2 * Z + k];
            Assert.Equal(want, got);
        }
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(x, Spatial.Unpatchify3d(p, 2)));
    }

    [Fact]
    public void PixelShuffle3dMapsChannelOffsetsToVoxels()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(1, 16, 2, 3, 2);
        var y = Spatial.PixelShuffle3d(x, 2);
        Assert.Equal(new long[] { 1, 2, 4, 6, 4 }, y.shape);
        for (int c = 0; c < 2; c++)
        for (int dx = 0; dx < 2; dx++) for (int dy = 0; dy < 2; dy++) for (int dz = 0; dz < 2; dz++)
        {
            int ch = c * 8 + (dx * 2 + dy) * 2 + dz;
            var want = x[0, ch];
            var got = y[0, c, TensorIndex.Slice(dx, null, 2), TensorIndex.Slice(dy, null, 2), TensorIndex.Slice(dz, null, 2)];
            Assert.Equal(0.0, TinyModels.MaxAbsDiff(want, got));
        }
    }

    [Fact]
    public void TimestepEmbeddingIsCosFirst()
    {
        using var scope = torch.NewDisposeScope();
        var t = torch.tensor(new[] { 0.0, 123.5 }, dtype: ScalarType.Float64);
        var e = TimestepEmbedder.Sinusoid(t, 256, ScalarType.Float64);
        Assert.Equal(new long[] { 2, 256 }, e.shape);
        var a = e.data<double>().ToArray();
        for (int k = 0; k < 128; k += 17)
        {
            double f = Math.Exp(-Math.Log(10000) * k / 128);
            Assert.Equal(Math.Cos(123.5 * f), a[256 + k], 12);
            Assert.Equal(Math.Sin(123.5 * f), a[256 + 128 + k], 12);
            Assert.Equal(1.0, a[k]);
        }
    }

    [Fact]
    public void PositionEmbeddingIsSinFirstPerAxisAndZeroPadded()
    {
        using var scope = torch.NewDisposeScope();
        var coords = torch.tensor(new long[] { 1, 2, 3 }).reshape(1, 3);
        var e = AbsolutePositionEmbedder.Embed(coords, 16, ScalarType.Float64).data<double>().ToArray();
        // freq_dim = 16 // 3 // 2 = 2 → 12 real channels + 4 zeros
        for (int axis = 0; axis < 3; axis++)
            for (int k = 0; k < 2; k++)
            {
                double f = 1.0 / Math.Pow(10000, k / 2.0), c = axis + 1;
                Assert.Equal(Math.Sin(c * f), e[axis * 4 + k], 14);
                Assert.Equal(Math.Cos(c * f), e[axis * 4 + 2 + k], 14);
            }
        Assert.Equal(new double[4], e[12..]);
    }

    [Fact]
    public void MultiHeadRmsNormIsNormalizeTimesGammaTimesSqrtD()
    {
        using var scope = torch.NewDisposeScope();
        var norm = new MultiHeadRMSNorm(4, 3, ScalarType.Float64, null);
        var gamma = Randn(3, 4);
        using (torch.no_grad()) norm.parameters().Single().copy_(gamma);
        var x = Randn(2, 5, 3, 4);
        var want = x / x.norm(-1, keepdim: true) * gamma * 2.0;
        Assert.True(TinyModels.MaxAbsDiff(want, norm.forward(x)) < 1e-14);
    }

    [Fact]
    public void AttentionMathMatchesAPerHeadSoftmaxAndSdpa()
    {
        using var scope = torch.NewDisposeScope();
        var q = Randn(2, 5, 3, 4);
        var k = Randn(2, 7, 3, 4);
        var v = Randn(2, 7, 3, 6);
        var math = DenseAttention.Compute(q, k, v, AttentionBackend.Math);
        Assert.Equal(new long[] { 2, 5, 3, 6 }, math.shape);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 3; h++)
            {
                var s = torch.softmax(torch.matmul(q[b, .., h], k[b, .., h].t()) / 2.0, -1);
                Assert.True(TinyModels.MaxAbsDiff(torch.matmul(s, v[b, .., h]), math[b, .., h]) < 1e-14);
            }
        var sdpa = DenseAttention.Compute(q, k, v, AttentionBackend.Sdpa);
        Assert.True(TinyModels.MaxAbsDiff(math, sdpa) < 1e-12);
        Assert.Equal(AttentionBackend.Math, DenseAttention.Resolve(AttentionBackend.Auto, q));
    }

    [Fact]
    public void SharedModulationEqualsPerBlockCopiesOfIt()
    {
        using var scope = torch.NewDisposeScope();
        using var shared = TinyModels.Flow(seed: 21, shareMod: true);
        using var perBlock = new SparseStructureFlowModel(TinyModels.FlowConfig(), ScalarType.Float64);
        var src = shared.state_dict();
        var sd = new Dictionary<string, Tensor>();
        foreach (var name in perBlock.state_dict().Keys)
        {
            var from = name.Contains("adaLN_modulation") ? name[(name.IndexOf("adaLN_modulation", StringComparison.Ordinal))..] : name;
            sd[name] = src[from];
        }
        MdtDist.Trellis.Checkpoints.TrellisCheckpoint.LoadStateDict(perBlock, sd);
        var x = Randn(2, 3, 4, 4, 4);
        var t = torch.tensor(new[] { 10.0, 990.0 }, dtype: ScalarType.Float64);
        var cond = Randn(2, 6, 10);
        using var noGrad = torch.no_grad();
        var a = shared.forward(x, t, cond);
        Assert.True(TinyModels.MaxAbs(a) > 1e-3);
        Assert.True(TinyModels.MaxAbsDiff(a, perBlock.forward(x, t, cond)) < 1e-13);
    }

    [Fact]
    public void PatchSize2FlowKeepsTheLatentShapeAndSamplesAreIndependent()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 8, patch: 2, qkRmsCross: true);
        var x = Randn(2, 3, 4, 4, 4);
        var t = torch.tensor(new[] { 250.0, 600.0 }, dtype: ScalarType.Float64);
        var cond = Randn(2, 3, 10);
        using var noGrad = torch.no_grad();
        var v = model.forward(x, t, cond);
        Assert.Equal(new long[] { 2, 2, 4, 4, 4 }, v.shape);
        // Batch items do not interact: item 1 alone gives the same velocity.
        var v1 = model.forward(x[1..2], t[1..2], cond[1..2]);
        Assert.True(TinyModels.MaxAbsDiff(v[1..2], v1) < 1e-13);
    }

    [Fact]
    public void FlowRejectsBadShapesNamingExpectedAndFound()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow();
        var t = torch.zeros(new long[] { 1 }, dtype: ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => model.forward(Randn(1, 3, 4, 4, 5), t, Randn(1, 2, 10)));
        Assert.Contains("[B, 3, 4, 4, 4]", e.Message);
        Assert.Contains("[1, 3, 4, 4, 5]", e.Message);
        Assert.Throws<ArgumentException>(() => model.forward(Randn(1, 3, 4, 4, 4), t, Randn(1, 2, 9)));
        Assert.Throws<ArgumentException>(() => model.forward(Randn(1, 3, 4, 4, 4), torch.zeros(new long[] { 2 }, dtype: ScalarType.Float64), Randn(1, 2, 10)));
        Assert.Throws<ArgumentException>(() => model.forward(torch.zeros(new long[] { 1, 3, 4, 4, 4 }), t, Randn(1, 2, 10)));
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void ReducedPrecisionTorsoStaysCloseToFloat32(ScalarType torso)
    {
        using var scope = torch.NewDisposeScope();
        using var f32 = TinyModels.Flow(seed: 9, dtype: ScalarType.Float32);
        using var low = TinyModels.Flow(seed: 9, dtype: ScalarType.Float32);
        low.SetTorsoDType(torso);
        Assert.Equal(torso, low.TorsoDType);
        Assert.Equal(ScalarType.Float32, low.DType);
        Assert.Equal(torso, low.state_dict()["blocks.0.self_attn.to_qkv.weight"].dtype);
        Assert.Equal(ScalarType.Float32, low.state_dict()["blocks.0.norm2.weight"].dtype);
        var rng = new Generator(91);
        var x = torch.randn(new long[] { 1, 3, 4, 4, 4 }, generator: rng);
        var t = torch.tensor(new[] { 500f });
        var cond = torch.randn(new long[] { 1, 4, 10 }, generator: rng);
        using var noGrad = torch.no_grad();
        var a = f32.forward(x, t, cond);
        var b = low.forward(x, t, cond);
        Assert.Equal(ScalarType.Float32, b.dtype);
        // Bar derived from the format (bf16 8, fp16 11 significant bits) and the number of rounded layers (ReducedPrecision).
        int layers = ReducedPrecision.RoundedLayers(low, torso);
        double err = ReducedPrecision.RelativeError(a, b);
        Assert.True(err < ReducedPrecision.Tolerance(torso, layers), $"{torso} torso relative error {err} over {layers} layers");
        Assert.True(err > ReducedPrecision.UnitRoundoff(ScalarType.Float32), $"{torso} torso relative error {err}: the reduced path did not run");
    }

    [Fact]
    public void GradientsReachEveryParameterThroughTheDisposeScopes()
    {
        using var scope = torch.NewDisposeScope();
        using var model = TinyModels.Flow(seed: 12, shareMod: true, qkRmsCross: true);
        var x = Randn(2, 3, 4, 4, 4);
        var t = torch.tensor(new[] { 100.0, 800.0 }, dtype: ScalarType.Float64);
        var cond = Randn(2, 3, 10);
        var loss = model.forward(x, t, cond).square().mean();
        loss.backward();
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.True(p.grad is not null, $"{name} has no gradient");
            Assert.True(TinyModels.MaxAbs(p.grad!) > 0, $"{name} has a zero gradient");
        }
        // Finite-difference check of one weight entry.
        var w = model.named_parameters().Single(p => p.name == "blocks.1.cross_attn.to_kv.weight").parameter;
        double g = w.grad![3, 4].item<double>();
        double h = 1e-6, up, down;
        using (torch.no_grad())
        {
            w[3, 4] += h; up = model.forward(x, t, cond).square().mean().item<double>();
            w[3, 4] -= 2 * h; down = model.forward(x, t, cond).square().mean().item<double>();
            w[3, 4] += h;
        }
        Assert.Equal(g, (up - down) / (2 * h), 6);
    }
}
