using System.Text.Json.Nodes;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Flow;

/// <summary>NaN/±inf in t, the condition, the negative condition or sparse features, and t outside [0, 1], are rejected at the adapters' entry.</summary>
public class FlowInputChecksTests
{
    private static T Build<T>(string json) where T : nn.Module
    {
        var node = JsonNode.Parse(json)!.AsObject();
        return (T)TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject()), ScalarType.Float64);
    }

    private static SparseStructureFlowAdapter Stage1() => new(Build<SparseStructureFlowModel>(
        """{"name": "SparseStructureFlowModel", "args": {"resolution": 2, "in_channels": 2, "out_channels": 2, "model_channels": 8, "cond_channels": 4, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": false}}"""));

    private static SLatFlowAdapter Stage2() => new(Build<SLatFlowModel>(
        """{"name": "SLatFlowModel", "args": {"resolution": 8, "in_channels": 2, "out_channels": 2, "model_channels": 8, "cond_channels": 4, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [4], "pe_mode": "ape", "qk_rms_norm": false}}"""));

    private static Tensor Cond(double poison = 0, int index = 5)
    {
        var c = torch.randn(new long[] { 1, 3, 4 }, dtype: ScalarType.Float64, generator: new Generator(4));
        if (poison != 0) c.view(-1)[index] = torch.tensor(poison, ScalarType.Float64);
        return c;
    }

    private static Latent DenseX() => Latent.Dense(torch.randn(new long[] { 1, 2, 2, 2, 2 }, dtype: ScalarType.Float64, generator: new Generator(5)));

    private static Latent SparseX(double poison = 0)
    {
        var coords = torch.tensor(new int[] { 0, 0, 0, 0, 0, 1, 2, 3, 0, 7, 7, 7 }, new long[] { 3, 4 });
        var feats = torch.randn(new long[] { 3, 2 }, dtype: ScalarType.Float64, generator: new Generator(6));
        if (poison != 0) feats[2, 1] = torch.tensor(poison, ScalarType.Float64);
        return new SparseTensor(feats, coords, resolution: 8).ToLatent();
    }

    [Theory]
    [InlineData(double.NaN, "t contains 1 NaN")]
    [InlineData(double.PositiveInfinity, "t contains 1 NaN or infinite")]
    [InlineData(1.5, "t must lie in [0, 1]; found 1.5")]
    [InlineData(-0.25, "t must lie in [0, 1]; found -0.25")]
    public void BadTimesAreRejected(double t, string expected)
    {
        var e1 = Assert.Throws<ArgumentException>(() => Stage1().Velocity(DenseX(), torch.tensor(new[] { t }), Cond()));
        Assert.StartsWith(expected.Split(';')[0], e1.Message);
        Assert.Equal("t", e1.ParamName);
        var e2 = Assert.Throws<ArgumentException>(() => Stage2().Velocity(SparseX(), torch.tensor(new[] { t }), Cond()));
        Assert.StartsWith(expected.Split(';')[0], e2.Message);
        if (expected.Contains("found")) Assert.Contains(expected.Split("; ")[1], e2.Message);
    }

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(double.NegativeInfinity)]
    public void NonFiniteConditionsAndFeaturesAreRejected(double poison)
    {
        var t = torch.tensor(new[] { 0.5 });
        var e1 = Assert.Throws<ArgumentException>(() => Stage1().Velocity(DenseX(), t, Cond(poison)));
        Assert.Contains("condition contains 1 NaN or infinite value(s) (the first at flat index 5 of shape [1, 3, 4]", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Stage2().Velocity(SparseX(), t, Cond(poison, 11)));
        Assert.Contains("condition contains 1 NaN", e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => Stage2().Velocity(SparseX(poison), t, Cond()));
        Assert.Contains("x (sparse features) contains 1 NaN or infinite value(s) (the first at flat index 5 of shape [3, 2]", e3.Message);
        var e4 = Assert.Throws<ArgumentException>(() => new ClassifierFreeGuidance(Stage1(), 3.0, negativeCondition: Cond(poison)));
        Assert.Equal("negativeCondition", e4.ParamName);
    }

    [Fact]
    public void ValidInputsAtTheEndsOfTheTimeIntervalPass()
    {
        using var v1 = Stage1().Velocity(DenseX(), torch.tensor(new[] { 1.0 }), Cond());
        using var v2 = Stage2().Velocity(SparseX(), torch.tensor(new[] { 0.0 }), Cond());
        Assert.True(torch.isfinite(v1).all().item<bool>());
        Assert.Equal(new long[] { 3, 2 }, v2.shape);
    }
}
