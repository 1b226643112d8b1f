using MdtDist.Core.Flow;
using MdtDist.Trellis.Flow;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using MdtDist.Trellis.Tests.Models;

namespace MdtDist.Trellis.Tests.Flow;

public class SparseStructureFlowAdapterTests
{
    private static Tensor Randn(params long[] shape) => torch.randn(shape, dtype: ScalarType.Float64);

    [Fact]
    public void ScalesTimeBy1000AndRepeatsABatchOneCondition()
    {
        using var scope = torch.NewDisposeScope();
        using var net = TinyModels.VelocityFlow(seed: 50);
        var model = new SparseStructureFlowAdapter(net);
        Assert.Equal(new long[] { 3, 3, 4, 4, 4 }, model.LatentShape(3));
        var x = Randn(3, 3, 4, 4, 4);
        var t = torch.tensor(new[] { 0.1, 0.55, 1.0 }, dtype: ScalarType.Float64);
        var cond = Randn(1, 5, 10);
        using var noGrad = torch.no_grad();
        var v = model.Velocity(Latent.Dense(x), t, cond);
        var direct = net.forward(x, t * 1000, cond.repeat(3, 1, 1));
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(direct, v));
        // A per-sample condition is passed through unchanged.
        var cond3 = Randn(3, 5, 10);
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(net.forward(x, t * 1000, cond3), model.Velocity(Latent.Dense(x), t, cond3)));
    }

    [Fact]
    public void ConvertsToTheNetworkDtypeAndBack()
    {
        using var scope = torch.NewDisposeScope();
        using var net = TinyModels.VelocityFlow(seed: 51, dtype: ScalarType.Float32);
        var model = new SparseStructureFlowAdapter(net);
        var x = Randn(1, 3, 4, 4, 4);
        using var noGrad = torch.no_grad();
        var v = model.Velocity(Latent.Dense(x), torch.tensor(new[] { 0.5 }, dtype: ScalarType.Float64), Randn(1, 2, 10));
        Assert.Equal(ScalarType.Float64, v.dtype);
        Assert.Equal(x.shape, v.shape);
    }

    [Fact]
    public void RejectsANetworkWhoseOutputIsNotAVelocityOfTheLatent()
    {
        using var net = TinyModels.Flow(seed: 53);   // in 3, out 2 channels
        var e = Assert.Throws<ArgumentException>(() => new SparseStructureFlowAdapter(net));
        Assert.Contains("out_channels", e.Message);
    }

    [Fact]
    public void RejectsWrongLatentsAndConditionsClearly()
    {
        using var scope = torch.NewDisposeScope();
        using var net = TinyModels.VelocityFlow(seed: 52);
        var model = new SparseStructureFlowAdapter(net);
        var x = Latent.Dense(Randn(2, 3, 4, 4, 4));
        var t = torch.tensor(new[] { 0.2, 0.4 }, dtype: ScalarType.Float64);

        var e1 = Assert.Throws<ArgumentException>(() => model.Velocity(x, t, Randn(2, 5, 11)));
        Assert.Equal("condition", e1.ParamName);
        Assert.Contains("[2 or 1, L, 10]", e1.Message);
        Assert.Contains("[2, 5, 11]", e1.Message);
        Assert.Equal("condition", Assert.Throws<ArgumentException>(() => model.Velocity(x, t, Randn(3, 5, 10))).ParamName);
        Assert.Equal("condition", Assert.Throws<ArgumentException>(() => model.Velocity(x, t, null)).ParamName);

        var e2 = Assert.Throws<ArgumentException>(() => model.Velocity(Latent.Dense(Randn(2, 3, 4, 4, 8)), t, Randn(2, 5, 10)));
        Assert.Equal("x", e2.ParamName);
        Assert.Contains("[2, 3, 4, 4, 4]", e2.Message);

        var rows = new Latent(Randn(10, 3), new RowLayout(torch.tensor(new long[] { 0, 0, 0, 0, 0, 1, 1, 1, 1, 1 }), 2));
        Assert.Contains("DenseLayout", Assert.Throws<ArgumentException>(() => model.Velocity(rows, t, Randn(2, 5, 10))).Message);

        Assert.Equal("t", Assert.Throws<ArgumentException>(() => model.Velocity(x, torch.zeros(new long[] { 3 }, dtype: ScalarType.Float64), Randn(2, 5, 10))).ParamName);
    }
}
