using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Tests.Pipeline;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>Building and disposing a TRELLIS network leaves no tensor alive (TorchSharp's per-thread live count).</summary>
public class ModelLifetimeTests
{
    private readonly ITestOutputHelper _out;

    public ModelLifetimeTests(ITestOutputHelper output) => _out = output;

    private static TrellisModelConfig Config(string key)
    {
        var node = JsonNode.Parse(TinyPipeline.Configs[key])!.AsObject();
        return new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject());
    }

    public static TheoryData<string> Keys => new() { "ss_flow", "ss_dec", "slat_flow", "slat_dec_gs" };

    /// <summary>
    /// The live count is exact bookkeeping (created minus disposed handles on this thread), so the bound is 0: one leaked
    /// handle per build would show as 5 after five builds. Two warm-up builds absorb one-time caches.
    /// </summary>
    [Theory]
    [MemberData(nameof(Keys))]
    public void BuildingAndDisposingLeavesNoLiveTensor(string key)
    {
        var config = Config(key);
        for (int i = 0; i < 2; i++) TrellisCheckpoint.Build(config, ScalarType.Float32).Dispose();
        long before = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) TrellisCheckpoint.Build(config, ScalarType.Float32).Dispose();
        long after = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        _out.WriteLine($"{key}: {after - before} live tensors after 5 builds");
        Assert.Equal(0, after - before);
    }

    /// <summary>Loading a whole model folder (pipeline.json + four checkpoints) leaves nothing alive once its networks are disposed (36 per load before).</summary>
    [Fact]
    public void LoadingAFolderLeavesNoLiveTensor()
    {
        var p0 = TinyPipeline.Create();
        var dir = TinyPipeline.WriteFolder(p0);
        foreach (var m in new TorchSharp.torch.nn.Module?[] { p0.StructureFlow, p0.StructureDecoder, p0.LatentFlow, p0.GaussianDecoder }) m?.Dispose();
        try
        {
            void LoadAndDispose()
            {
                var p = MdtDist.Trellis.Pipeline.TrellisPipeline.FromFolder(dir);
                foreach (var m in new TorchSharp.torch.nn.Module?[] { p.StructureFlow, p.StructureDecoder, p.LatentFlow, p.GaussianDecoder }) m?.Dispose();
            }
            for (int i = 0; i < 2; i++) LoadAndDispose();
            long before = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            for (int i = 0; i < 3; i++) LoadAndDispose();
            long after = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            _out.WriteLine($"FromFolder: {after - before} live tensors after 3 loads");
            Assert.Equal(0, after - before);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>Loading a checkpoint (config + header + meta shape check + weights) leaves nothing alive either.</summary>
    [Theory]
    [MemberData(nameof(Keys))]
    public void LoadingAndDisposingLeavesNoLiveTensor(string key)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-lifetime-").FullName;
        try
        {
            var stem = Path.Combine(dir, key);
            using (var m = TrellisCheckpoint.Build(Config(key), ScalarType.Float32)) TrellisCheckpoint.Save(m, stem, ScalarType.Float16);
            for (int i = 0; i < 2; i++) TrellisCheckpoint.Load(stem).Dispose();
            long before = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            for (int i = 0; i < 5; i++) TrellisCheckpoint.Load(stem).Dispose();
            long after = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            _out.WriteLine($"{key}: {after - before} live tensors after 5 loads");
            Assert.Equal(0, after - before);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
