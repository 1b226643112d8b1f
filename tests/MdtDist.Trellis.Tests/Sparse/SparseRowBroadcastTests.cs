using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Sparse;

public class SparseRowBroadcastTests
{
    /// <summary>
    /// A one-sample run (modulation broadcast as [1, C] instead of copied per row) reproduces that sample's rows of the
    /// two-sample PyTorch reference (per-row modulation) to the golden tolerance.
    /// </summary>
    [Fact]
    public void OneSampleOfTheLatentFlowGoldenMatchesItsRowsOfTheReference()
    {
        using var c = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "slat_flow.json"));
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var model = GoldenModels.Load<SLatFlowModel>(c);
        var coords = c["in.coords"];
        Assert.Equal(2, c["in.t"].shape[0]);
        var rows = (coords[.., 0] == 0).nonzero().squeeze(1);
        var one = new SparseTensor(c["in.feats"].index_select(0, rows), coords.index_select(0, rows), 16);
        Assert.Equal(1, one.BatchSize);
        var perSample = torch.ones(new long[] { 1, 3 }, dtype: ScalarType.Float64);
        Assert.Equal(new long[] { 1, 3 }, one.PerRowOrShared(perSample).shape);
        var y = model.forward(one, c["in.t"][..1], c["in.cond"][..1]);
        var want = c["out.feats"].index_select(0, rows);
        // the golden suite's measure and bar: max|diff| / max(1, max|ref|) ≤ 1e-9 for a float64 port
        double err = (y.Feats - want).abs().max().item<double>() / Math.Max(1, want.abs().max().item<double>());
        Assert.True(err < 1e-9, $"relative error {err}");
    }
}
