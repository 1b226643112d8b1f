using MdtDist.TestSupport;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>
/// Both flows built wholly in bfloat16 (every weight and activation, as <c>TrellisCpu --dtype bfloat16</c> runs them; the
/// bfloat16 layer norms and head-major SDPA of the CPU path) follow the PyTorch float64 reference of the golden cases.
/// </summary>
public class BFloat16FlowTests
{
    private static GoldenCase Case(string name) => new(Path.Combine(GoldenParityTests.BundledDirectory, name + ".json"));

    [Fact]
    public void StructureFlowInBFloat16FollowsTheReference()
    {
        using var c = Case("ss_flow");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var model = GoldenModels.Load<SparseStructureFlowModel>(c, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, model.TorsoDType);
        var v = model.forward(c["in.x"].to(ScalarType.BFloat16), c["in.t"], c["in.cond"].to(ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, v.dtype);
        AssertWithinBFloat16Bar(model, c["out.v"], v);
    }

    [Fact]
    public void LatentFlowInBFloat16FollowsTheReference()
    {
        using var c = Case("slat_flow");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var model = GoldenModels.Load<SLatFlowModel>(c, ScalarType.BFloat16);
        var x = new SparseTensor(c["in.feats"].to(ScalarType.BFloat16), c["in.coords"], 16);
        var y = model.forward(x, c["in.t"], c["in.cond"].to(ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, y.Dtype);
        AssertWithinBFloat16Bar(model, c["out.feats"], y.Feats);
    }

    private static void AssertWithinBFloat16Bar(nn.Module model, Tensor reference, Tensor actual)
    {
        // Bar derived from bfloat16's 8 significant bits and the number of bfloat16 weight layers (ReducedPrecision:
        // 6·u·L on the relative 2-norm error); the lower bound shows the reduced path ran.
        int layers = ReducedPrecision.RoundedLayers(model, ScalarType.BFloat16);
        double err = ReducedPrecision.RelativeError(reference, actual);
        Assert.True(err < ReducedPrecision.Tolerance(ScalarType.BFloat16, layers), $"bfloat16 relative error {err} over {layers} layers");
        Assert.True(err > ReducedPrecision.UnitRoundoff(ScalarType.Float32), $"bfloat16 relative error {err}: the reduced path did not run");
    }
}
