using MdtDist.Core.Flow;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Data;
using MdtDist.Trellis.Sparse;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Data;

/// <summary>Batches of the fixture dataset, conditions through a tiny random DINOv2 (14-pixel patches on 28² images).</summary>
public class TrellisDatasetBatchTests
{
    private static readonly string Root = TrellisDatasetTests.Root;

    private static Dinov2Model TinyDinov2()
    {
        var m = new Dinov2Model(new Dinov2Config(16, 1, 2, ImageSize: 28));
        var g = new Generator(5);
        using (torch.no_grad())
            foreach (var (_, p) in m.named_parameters()) p.copy_(torch.randn(p.shape, generator: g) * 0.2);
        m.eval();
        return m;
    }

    private static TrellisDataset Open(TrellisLatentKind kind) => TrellisDataset.Open(new[] { Root }, new TrellisDatasetOptions
    {
        Kind = kind, Condition = TrellisConditionKind.Image, MinAestheticScore = 4.5, ImageSize = 28,
        LatentModel = kind == TrellisLatentKind.SparseStructure ? TrellisDatasetTests.SsModel : TrellisDatasetTests.SlatModel,
    });

    [Fact]
    public void BatchesAreDeterministicPerStepAndCoverEachEpoch()
    {
        var ds = Open(TrellisLatentKind.SparseStructure);
        using var dino = TinyDinov2();
        var data = new TrellisDistillationData(ds, batchSize: 2, seed: 9, TrellisDistillationData.EncodeWith(dino));
        // One epoch = 4 instances = steps 0 and 1 at batch 2: every instance once.
        var epoch = data.Indices(0).Concat(data.Indices(1)).Select(p => p.Index).OrderBy(i => i).ToArray();
        Assert.Equal(new[] { 0, 1, 2, 3 }, epoch);
        Assert.Equal(data.Indices(5), data.Indices(5));
        using var scope = torch.NewDisposeScope();
        var a = data.GetBatch(3);
        var b = new TrellisDistillationData(ds, 2, 9, TrellisDistillationData.EncodeWith(dino)).GetBatch(3);
        Assert.Equal(new long[] { 2, 8, 16, 16, 16 }, a.X0.Data.shape);
        Assert.Equal(0f, (a.X0.Data - b.X0.Data).abs().max().item<float>());
        Assert.Equal(new long[] { 2, 1 + 4 + 4, 16 }, a.Condition!.shape);   // cls + 4 registers + 2×2 patches
        Assert.Equal(0f, (a.Condition - b.Condition!).abs().max().item<float>());
        Assert.Equal(0f, a.NegativeCondition!.abs().max().item<float>());
        // Two ranks see disjoint halves of an epoch.
        var r0 = new TrellisDistillationData(ds, 1, 9, TrellisDistillationData.EncodeWith(dino), rank: 0, worldSize: 2);
        var r1 = new TrellisDistillationData(ds, 1, 9, TrellisDistillationData.EncodeWith(dino), rank: 1, worldSize: 2);
        var seen = new[] { 0L, 1 }.SelectMany(s => r0.Indices(s).Concat(r1.Indices(s))).Select(p => p.Index).OrderBy(i => i);
        Assert.Equal(new[] { 0, 1, 2, 3 }, seen);
    }

    [Fact]
    public void SparseBatchesSplitLoadBalanced()
    {
        var ds = Open(TrellisLatentKind.StructuredLatent); // 3 instances: 100, 70, 114 voxels
        using var dino = TinyDinov2();
        var data = new TrellisDistillationData(ds, batchSize: 3, seed: 1, TrellisDistillationData.EncodeWith(dino));
        using var scope = torch.NewDisposeScope();
        var batch = data.GetBatch(0);
        var st = SparseTensor.FromLatent(batch.X0);
        Assert.Equal(3, st.BatchSize);
        Assert.Equal(284, st.Count);
        var counts = st.RowRanges.Select(r => r.Length).ToArray();
        var parts = TrellisDistillationData.Split(batch, 2);
        Assert.Equal(2, parts.Count);
        var expected = TrellisBatching.LoadBalancedGroups(counts, 2);
        for (int i = 0; i < 2; i++)
        {
            var sub = SparseTensor.FromLatent(parts[i].X0);
            Assert.Equal(expected[i].Select(k => counts[k]), sub.RowRanges.Select(r => r.Length));
            Assert.Equal(expected[i].Count, parts[i].Condition!.shape[0]);
            // Rows and conditions travel together.
            var first = expected[i][0];
            Assert.Equal(0f, (parts[i].Condition![0] - batch.Condition![first]).abs().max().item<float>());
            Assert.Equal(0f, (sub.Feats.narrow(0, 0, counts[first]) - st.Feats.narrow(0, st.RowRanges[first].Start, counts[first])).abs().max().item<float>());
        }
    }

    [Fact]
    public void FeatureCacheIsReused()
    {
        var ds = Open(TrellisLatentKind.SparseStructure);
        var cache = Directory.CreateTempSubdirectory("mdtdist-feat-").FullName;
        try
        {
            using var dino = TinyDinov2();
            int calls = 0;
            Func<Tensor, Tensor> enc = x => { calls++; return TrellisDistillationData.EncodeWith(dino)(x); };
            using var scope = torch.NewDisposeScope();
            var first = new TrellisDistillationData(ds, 2, 4, enc, cache).GetBatch(0);
            Assert.Equal(2, calls);
            Assert.Equal(2, Directory.GetFiles(cache, "*.safetensors").Length);
            var again = new TrellisDistillationData(ds, 2, 4, enc, cache).GetBatch(0);
            Assert.Equal(2, calls);
            Assert.Equal(0f, (first.Condition! - again.Condition!).abs().max().item<float>());
        }
        finally { Directory.Delete(cache, true); }
    }

    /// <summary>
    /// The training crop on a synthetic view: opaque block x ∈ [10, 29], y ∈ [20, 39] of a 100×60 image. Centre (19.5, 29.5),
    /// half-side 9.5 × 1.2 = 11.4, box int(8.1), int(18.1), int(30.9), int(40.9) = (8, 18, 30, 40): a 22² crop. Resized to
    /// 22² (Lanczos at scale 1 is the identity), output pixel (x, y) is source (8 + x, 18 + y) premultiplied.
    /// </summary>
    [Fact]
    public void TrainingCropFollowsTheMixin()
    {
        var path = Path.Combine(Path.GetTempPath(), $"mdtdist-view-{Guid.NewGuid():N}.png");
        using (var img = new Image<Rgba32>(100, 60))
        {
            for (int y = 20; y <= 39; y++)
                for (int x = 10; x <= 29; x++)
                    img[x, y] = new Rgba32((byte)(x * 5), (byte)(y * 3), 200, (byte)(x == 10 ? 128 : 255));
            img.SaveAsPng(path);
        }
        try
        {
            using var t = TrellisConditionImages.Load(path, 22);
            Assert.Equal(new long[] { 3, 22, 22 }, t.shape);
            // (x=2, y=2) ← source (10, 20): R 50, alpha 128. PIL resizes RGBA through premultiplied 8-bit RGBa:
            // 50·128/255 → 25 (MULDIV255), back 255·25/128 → 49 (integer division); then × 128/255 in float.
            Assert.Equal(49f / 255f * (128f / 255f), t[0, 2, 2].item<float>(), 5);
            // (x=5, y=4) ← source (13, 22), opaque.
            Assert.Equal(65f / 255f, t[0, 4, 5].item<float>(), 5);
            Assert.Equal(66f / 255f, t[1, 4, 5].item<float>(), 5);
            // (x=0, y=0) ← source (8, 18): transparent.
            Assert.Equal(0f, t[.., 0, 0].abs().max().item<float>());
        }
        finally { File.Delete(path); }
        var opaque = Path.Combine(Path.GetTempPath(), $"mdtdist-view-{Guid.NewGuid():N}.png");
        using (var img = new Image<Rgba32>(8, 8, new Rgba32(1, 2, 3, 255))) img.SaveAsPng(opaque);
        try { Assert.Contains("no transparency", Assert.Throws<InvalidDataException>(() => TrellisConditionImages.Load(opaque)).Message); }
        finally { File.Delete(opaque); }
    }
}
