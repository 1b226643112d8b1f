using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using MdtDist.Trellis.Tests.Models;
using MdtDist.Trellis.Tests.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Modules;

/// <summary>
/// The cross-attention K/V cache: bit-identical outputs (the cached tensor is the very projection an uncached forward
/// computes), one projection per condition and layer across sampler steps, replaced (and disposed) on a new condition,
/// bypassed in training mode and under autograd, freed by the model's Dispose.
/// </summary>
public class CrossAttentionKvCacheTests
{
    private static List<CrossAttentionKvCache> Caches(nn.Module model) =>
        model.modules().OfType<MultiHeadAttention>().Where(a => a.IsCross).Select(a => a.KvCache)
            .Concat(model.modules().OfType<SparseMultiHeadAttention>().Where(a => a.IsCross).Select(a => a.KvCache)).ToList();

    private static bool BitIdentical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && torch.equal(a, b).all().item<bool>();

    private static MdtDist.Trellis.Models.SLatFlowModel TinySparseFlow(long seed)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(
            """{"resolution": 8, "in_channels": 2, "out_channels": 2, "model_channels": 16, "cond_channels": 6, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}""")!.AsObject();
        return RandomTinyTrellis.Randomize(new MdtDist.Trellis.Models.SLatFlowModel(MdtDist.Trellis.Models.SLatFlowConfig.FromArgs(json), ScalarType.Float64), seed);
    }

    /// <summary>Two no_grad forwards of <paramref name="net"/> on seeded inputs, each bit-identical to a forward with autograd on (which caches nothing).</summary>
    private static void TwoCachedForwardsAreBitIdentical(MdtDist.Trellis.Models.SLatFlowModel net, ulong seed)
    {
        var coords = torch.tensor(new int[] { 0, 0, 0, 0, 0, 1, 2, 3, 1, 7, 7, 7, 1, 2, 2, 2 }, new long[] { 4, 4 });
        var x = new SparseTensor(torch.randn(new long[] { 4, 2 }, dtype: ScalarType.Float64, generator: new Generator(seed)), coords, resolution: 8);
        using var t = torch.tensor(new[] { 250.0, 900.0 }, dtype: ScalarType.Float64);
        using var cond = torch.randn(new long[] { 2, 5, 6 }, dtype: ScalarType.Float64, generator: new Generator(seed + 1));
        using var reference = net.forward(x, t, cond).Feats.detach();
        using var noGrad = torch.no_grad();
        using var a = net.forward(x, t, cond).Feats;
        using var b = net.forward(x, t, cond).Feats;
        Assert.True(BitIdentical(a, reference));
        Assert.True(BitIdentical(b, reference));
    }

    [Fact]
    public void Stage1CachedForwardIsBitIdenticalAndProjectsOncePerCondition()
    {
        using var model = TinyModels.VelocityFlow(seed: 51);
        var caches = Caches(model);
        Assert.Equal(2, caches.Count);   // one cross-attention per block
        using (torch.no_grad())
        {
            using var inTraining = model.forward(torch.zeros(new long[] { 2, 3, 4, 4, 4 }, dtype: ScalarType.Float64), torch.tensor(new[] { 1.0, 2.0 }, dtype: ScalarType.Float64), torch.zeros(new long[] { 2, 5, 10 }, dtype: ScalarType.Float64));
            Assert.All(caches, c => Assert.Null(c.Cached));   // training mode: never cached
        }
        model.eval();
        using var x = torch.randn(new long[] { 2, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(52));
        using var t = torch.tensor(new[] { 300.0, 700.0 }, dtype: ScalarType.Float64);
        using var cond = torch.randn(new long[] { 2, 5, 10 }, dtype: ScalarType.Float64, generator: new Generator(53));
        using var cond2 = torch.randn(new long[] { 2, 5, 10 }, dtype: ScalarType.Float64, generator: new Generator(54));

        // autograd on: never cached
        using var reference = model.forward(x, t, cond).detach();
        using var reference2 = model.forward(x, t, cond2).detach();
        Assert.All(caches, c => Assert.Null(c.Cached));

        using (torch.no_grad())
        {
            using var first = model.forward(x, t, cond);
            using var second = model.forward(x, t, cond);
            Assert.True(BitIdentical(first, reference));
            Assert.True(BitIdentical(second, reference));
            Assert.All(caches, c => Assert.Equal((1L, 1L), (c.Misses, c.Hits)));

            var old = caches.Select(c => c.Cached!).ToList();
            using var other = model.forward(x, t, cond2);   // new condition: replaced, old projection disposed
            Assert.True(BitIdentical(other, reference2));
            Assert.All(old, o => Assert.True(o.IsInvalid));
            Assert.All(caches, c => Assert.Equal(2L, c.Misses));
        }

        var kept = caches.Select(c => c.Cached!).ToList();
        model.Dispose();
        Assert.All(kept, k => Assert.True(k.IsInvalid));
    }

    [Fact]
    public void Stage2SparseCrossAttentionIsCachedAndBitIdentical()
    {
        using var net = TinySparseFlow(61);
        var caches = Caches(net);
        Assert.Equal(2, caches.Count);
        net.eval();
        TwoCachedForwardsAreBitIdentical(net, 62);
        Assert.All(caches, c => Assert.Equal((1L, 1L), (c.Misses, c.Hits)));
    }

    [Fact]
    public void AConditionInAnotherDTypeThanTheTorsoIsCastOnceSoTheProjectionsAreCachedToo()
    {
        // a flow driven directly (not through the pipeline, which casts once per run) with its torso narrower than the
        // condition: the cast is made once per condition, the cross-attention layers then see the same tensor and hit
        using var dense = TinyModels.VelocityFlow(seed: 56);
        dense.SetTorsoDType(ScalarType.Float32);
        dense.eval();
        var denseCaches = Caches(dense);
        using var x = torch.randn(new long[] { 2, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(57));
        using var t = torch.tensor(new[] { 300.0, 700.0 }, dtype: ScalarType.Float64);
        using var cond = torch.randn(new long[] { 2, 5, 10 }, dtype: ScalarType.Float64, generator: new Generator(58));
        using var reference = dense.forward(x, t, cond).detach();   // autograd on: nothing cached
        Assert.Equal((0L, 0L), (dense.ConditionCast.Misses, dense.ConditionCast.Hits));
        using (torch.no_grad())
        {
            using var first = dense.forward(x, t, cond);
            using var second = dense.forward(x, t, cond);
            Assert.True(BitIdentical(first, reference));
            Assert.True(BitIdentical(second, reference));
        }
        Assert.Equal((1L, 1L), (dense.ConditionCast.Misses, dense.ConditionCast.Hits));
        Assert.Equal(ScalarType.Float32, dense.ConditionCast.Cached!.dtype);
        Assert.All(denseCaches, c => Assert.Equal((1L, 1L), (c.Misses, c.Hits)));

        using var sparse = TinySparseFlow(64);
        sparse.SetTorsoDType(ScalarType.Float32);
        sparse.eval();
        TwoCachedForwardsAreBitIdentical(sparse, 65);
        Assert.Equal((1L, 1L), (sparse.ConditionCast.Misses, sparse.ConditionCast.Hits));
        Assert.All(Caches(sparse), c => Assert.Equal((1L, 1L), (c.Misses, c.Hits)));

        var kept = dense.ConditionCast.Cached!;
        dense.Dispose();
        Assert.True(kept.IsInvalid);   // the model's Dispose frees the cached cast
    }

    [Fact]
    public void GuidedSamplerStepsThroughTheAdapterProjectTheConditionOnce()
    {
        using var net = TinyModels.VelocityFlow(seed: 71);
        net.eval();
        var adapter = new SparseStructureFlowAdapter(net);
        var caches = Caches(net);
        using var cond = torch.randn(new long[] { 1, 5, 10 }, dtype: ScalarType.Float64, generator: new Generator(72));
        using var x = torch.randn(new long[] { 1, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(73));
        var guided = new ClassifierFreeGuidance(adapter, 3.0) { BatchedPasses = true };
        using var noGrad = torch.no_grad();
        foreach (var tv in new[] { 0.9, 0.7, 0.5 })
        {
            using var t = torch.tensor(new[] { tv }, dtype: ScalarType.Float64);
            using var v = guided.Velocity(Latent.Dense(x), t, cond);
        }
        // the paired [cond; zeros] condition is built once, so each layer projects once and hits on the next 2 steps
        Assert.All(caches, c => Assert.Equal((1L, 2L), (c.Misses, c.Hits)));
    }

    [Fact]
    public void ASessionCachesInTrainingModeAndFreesItsEntriesWhenItEnds()
    {
        using var net = TinyModels.VelocityFlow(seed: 81);   // training mode (a student being distilled)
        var caches = Caches(net);
        var guided = new ClassifierFreeGuidance(new SparseStructureFlowAdapter(net), 3.0) { BatchedPasses = true };
        using var cond = torch.randn(new long[] { 1, 5, 10 }, dtype: ScalarType.Float64, generator: new Generator(82));
        using var x = torch.randn(new long[] { 1, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(83));
        var steps = new[] { 0.9, 0.7, 0.5 };
        using var noGrad = torch.no_grad();
        var outside = steps.Select(tv => guided.Velocity(Latent.Dense(x), torch.tensor(new[] { tv }, dtype: ScalarType.Float64), cond)).ToList();
        Assert.All(caches, c => Assert.Equal((0L, 0L), (c.Misses, c.Hits)));   // training mode without a session: never cached
        List<Tensor> inside;
        using (KvCacheSession.Begin())
        {
            inside = steps.Select(tv => guided.Velocity(Latent.Dense(x), torch.tensor(new[] { tv }, dtype: ScalarType.Float64), cond)).ToList();
            Assert.All(caches, c => Assert.Equal((1L, 2L), (c.Misses, c.Hits)));
            Assert.All(caches, c => Assert.NotNull(c.Cached));
        }
        Assert.All(caches, c => Assert.Null(c.Cached));   // the session's end freed its projections
        for (int i = 0; i < steps.Length; i++) Assert.True(BitIdentical(outside[i], inside[i]));

        // a later session (weights may have changed in between: an optimizer step) never serves the earlier entries
        using (KvCacheSession.Begin())
        {
            using var again = guided.Velocity(Latent.Dense(x), torch.tensor(new[] { 0.9 }, dtype: ScalarType.Float64), cond);
            Assert.All(caches, c => Assert.Equal((2L, 2L), (c.Misses, c.Hits)));
        }
        foreach (var v in outside.Concat(inside)) v.Dispose();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ThePipelineProjectsTheConditionOncePerStageRunAndKeepsNothingAfterwards(bool halfTorso)
    {
        // TRELLIS-image-large's samplers (25 guided steps per stage), networks in training mode; with a 16-bit torso (the
        // released checkpoints' fp16 blocks) the float32 condition is cast once per stage run, not on every step
        var pipeline = TinyPipeline.Create(ScalarType.Float32, seed: 91);
        if (halfTorso)
        {
            pipeline.StructureFlow.SetTorsoDType(ScalarType.BFloat16);
            pipeline.LatentFlow.SetTorsoDType(ScalarType.BFloat16);
        }
        var caches = Caches(pipeline.StructureFlow).Concat(Caches(pipeline.LatentFlow)).ToList();
        Assert.NotEmpty(caches);
        using var cond = TinyPipeline.Condition(seed: 92);
        using var output = pipeline.Run(cond, new TrellisRunOptions { Seed = 3 });
        // inside the CFG interval every step reuses the [cond; neg] projection, outside it the plain condition's: at most
        // 2 projections per layer and stage run instead of one per step
        Assert.All(caches, c => Assert.InRange(c.Misses, 1, 2));
        Assert.All(caches, c => Assert.True(c.Hits >= 20, $"{c.Hits} hits"));
        Assert.All(caches, c => Assert.Null(c.Cached));
    }
}
