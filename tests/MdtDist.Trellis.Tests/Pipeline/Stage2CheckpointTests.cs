using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

public class Stage2CheckpointTests
{
    [Fact]
    public void AStage2StudentSavesInTrellisLayoutAndLoadsBackIdentically()
    {
        var model = (SLatFlowModel)TinyPipeline.Build("slat_flow", 5, ScalarType.Float64);
        var dir = Directory.CreateTempSubdirectory("mdtdist-slat-").FullName;
        var stem = Path.Combine(dir, "ckpts", "slat_flow_student");
        TrellisCheckpoint.Save(model, stem);
        var config = TrellisCheckpoint.ReadConfig(stem);
        Assert.Equal("SLatFlowModel", config.Name);
        Assert.Equal(16, config.Args["resolution"]!.GetValue<int>());
        Assert.Equal(8, config.Args["io_block_channels"]![0]!.GetValue<int>());
        var back = TrellisCheckpoint.Load<SLatFlowModel>(stem, ScalarType.Float64);
        using var coords = torch.tensor(new[] { 0, 1, 2, 3, 0, 1, 2, 4, 0, 5, 5, 5, 1, 7, 7, 7, 1, 7, 8, 7 }, new long[] { 5, 4 }, dtype: ScalarType.Int32);
        using var feats = torch.randn(new long[] { 5, 8 }, dtype: ScalarType.Float64, generator: new Generator(3));
        var x = new SparseTensor(feats, coords, 16, 2);
        using var t = torch.tensor(new[] { 300.0, 800.0 }, dtype: ScalarType.Float64);
        using var cond = torch.randn(new long[] { 2, 3, 16 }, dtype: ScalarType.Float64, generator: new Generator(4));
        using var a = model.forward(x, t, cond).Feats;
        using var b = back.forward(x, t, cond).Feats;
        Assert.Equal(0.0, (a - b).abs().max().item<double>());
        // The elastic variant keeps its TRELLIS class name.
        var elastic = new ElasticSLatFlowModel(model.Config, ScalarType.Float32);
        TrellisCheckpoint.Save(elastic, stem + "_elastic", ScalarType.Float16);
        Assert.Equal("ElasticSLatFlowModel", TrellisCheckpoint.ReadConfig(stem + "_elastic").Name);
        Assert.IsType<ElasticSLatFlowModel>(TrellisCheckpoint.Load(stem + "_elastic"));
    }
}
