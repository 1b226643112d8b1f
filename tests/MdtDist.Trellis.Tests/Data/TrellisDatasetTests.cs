using System.Text.Json.Nodes;
using MdtDist.Trellis.Data;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Data;

/// <summary>
/// The fixture was written by numpy and PIL in the layout of TRELLIS's dataset toolkit: five instances; #4 (8c09…) has no
/// renders (cond_rendered False), #3 (dfd5…) no structured latent, #1 (0428…) aesthetic score 4.8.
/// </summary>
public class TrellisDatasetTests
{
    internal static readonly string Root = Path.Combine(AppContext.BaseDirectory, "TestData", "trellis_dataset_tiny");
    internal const string SsModel = "ss_enc_conv3d_16l8_fp16";
    internal const string SlatModel = "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16";

    private static TrellisDataset Open(TrellisLatentKind kind, TrellisConditionKind cond, double minScore) =>
        TrellisDataset.Open(new[] { Root }, new TrellisDatasetOptions
        {
            Kind = kind, LatentModel = kind == TrellisLatentKind.SparseStructure ? SsModel : SlatModel, Condition = cond, MinAestheticScore = minScore,
        });

    /// <summary>Counts after each filter, as TRELLIS's filter_metadata chains compute them on this metadata.csv.</summary>
    [Theory]
    [InlineData(TrellisLatentKind.SparseStructure, TrellisConditionKind.Image, 4.5, new[] { 5, 5, 5, 4 })]
    [InlineData(TrellisLatentKind.SparseStructure, TrellisConditionKind.Image, 5.0, new[] { 5, 5, 4, 3 })]
    [InlineData(TrellisLatentKind.SparseStructure, TrellisConditionKind.None, 5.0, new[] { 5, 5, 4 })]
    [InlineData(TrellisLatentKind.StructuredLatent, TrellisConditionKind.Image, 4.5, new[] { 5, 4, 4, 4, 3 })]
    [InlineData(TrellisLatentKind.StructuredLatent, TrellisConditionKind.Image, 5.0, new[] { 5, 4, 3, 3, 2 })]
    [InlineData(TrellisLatentKind.StructuredLatent, TrellisConditionKind.None, 4.5, new[] { 5, 4, 4, 4 })]
    public void FiltersAsTrellis(TrellisLatentKind kind, TrellisConditionKind cond, double minScore, int[] counts)
    {
        var ds = Open(kind, cond, minScore);
        var stats = Assert.Single(ds.Stats);
        Assert.Equal("trellis_dataset_tiny", stats.Key);
        Assert.Equal(counts, stats.Value.Select(kv => kv.Value));
        Assert.Equal(counts[^1], ds.Count);
        Assert.Equal("Total", stats.Value[0].Key);
    }

    [Fact]
    public void KeepsTheRightInstancesInFileOrder()
    {
        var ds = Open(TrellisLatentKind.StructuredLatent, TrellisConditionKind.Image, 4.5);
        Assert.Equal(new[] { "1bbcad29", "042896dc", "dba0082e" }, ds.Instances.Select(i => i.Sha256[..8]));
        Assert.Equal(new long[] { 100, 70, 114 }, ds.Instances.Select(i => i.NumVoxels));
        // Two roots: instances of both, in order.
        var two = TrellisDataset.Open(new[] { Root, Root }, ds.Options);
        Assert.Equal(6, two.Count);
    }

    /// <summary>
    /// Values against an independent reading of the same files (Python's zipfile + struct, no numpy): shapes, the sum of
    /// every array and its first values; coordinates count equals metadata.csv's num_voxels.
    /// </summary>
    [Fact]
    public void LatentsEqualTheFiles()
    {
        var ss = Open(TrellisLatentKind.SparseStructure, TrellisConditionKind.None, 4.5);
        var idx = ss.Instances.Select((x, i) => (x, i)).First(p => p.x.Sha256.StartsWith("042896dc", StringComparison.Ordinal)).i;
        using (var z = ss.LoadStructureLatent(idx))
        {
            Assert.Equal(new long[] { 8, 16, 16, 16 }, z.shape);
            Assert.Equal(ScalarType.Float32, z.dtype);
            // float32 values summed in float64: the sum is exact up to float64 rounding of 32768 terms (< 1e-9 here).
            Assert.Equal(-38.907860479542705, z.to(ScalarType.Float64).sum().item<double>(), 9);
            Assert.Equal(new[] { -0.5441328287124634f, -1.5536308288574219f, -0.7217456102371216f }, z.flatten()[..3].data<float>().ToArray());
        }
        var slat = Open(TrellisLatentKind.StructuredLatent, TrellisConditionKind.Image, 4.5);
        var expected = new Dictionary<string, (long N, double FeatSum, long CoordSum, int[] FirstCoord)>
        {
            ["1bbcad29"] = (100, 11.404916441999376, 9683, new[] { 0, 19, 3 }),
            ["042896dc"] = (70, 21.600231525138952, 7683, new[] { 2, 26, 62 }),
            ["dba0082e"] = (114, -5.957857792964205, 10861, new[] { 0, 30, 53 }),
        };
        for (int i = 0; i < slat.Count; i++)
        {
            var e = expected[slat.Instances[i].Sha256[..8]];
            var (coords, feats) = slat.LoadStructuredLatent(i);
            using (coords) using (feats)
            {
                Assert.Equal(new long[] { e.N, 3 }, coords.shape);
                Assert.Equal(new long[] { e.N, 8 }, feats.shape);
                Assert.Equal(slat.Instances[i].NumVoxels, e.N);
                Assert.Equal(ScalarType.Int32, coords.dtype);
                Assert.Equal(e.CoordSum, coords.to(ScalarType.Int64).sum().item<long>());
                Assert.Equal(e.FirstCoord, coords[0].data<int>().ToArray());
                Assert.Equal(e.FeatSum, feats.to(ScalarType.Float64).sum().item<double>(), 9);
            }
        }
    }

    [Fact]
    public void NormalisesByConfiguredMeanAndStd()
    {
        var mean = Enumerable.Range(0, 8).Select(i => 0.1 * i).ToArray();
        var std = Enumerable.Range(0, 8).Select(i => 1.0 + i).ToArray();
        var plain = Open(TrellisLatentKind.StructuredLatent, TrellisConditionKind.None, 4.5);
        var normalization = new SLatNormalization(mean, std);
        var norm = TrellisDataset.Open(new[] { Root }, plain.Options with { Normalization = normalization });
        var (c0, f0) = plain.LoadStructuredLatent(0);
        var (c1, f1) = norm.LoadStructuredLatent(0);
        using var m = torch.tensor(mean, ScalarType.Float32);
        using var s = torch.tensor(std, ScalarType.Float32);
        using var want = (f0 - m) / s;
        Assert.Equal(0f, (want - f1).abs().max().item<float>());
        Assert.True(c0.eq(c1).all().item<bool>());
        // The pipeline's denormalisation is the inverse: f1·std + mean recovers the file's feats up to float32 rounding.
        // Four roundings (−, /, ·, +), each ≤ 2^-24 ≈ 6e-8 of a value ≤ |f0| + 2·max|mean| (max|mean| = 0.7):
        // |error| ≤ 2.4e-7·(max|f0| + 1.4) < 1e-6·(max|f0| + 1).
        using var back = normalization.Denormalize(f1);
        Assert.True((back - f0).abs().max().item<float>() < 1e-6f * (f0.abs().max().item<float>() + 1f));
        foreach (var t in new[] { c0, f0, c1, f1 }) t.Dispose();

        // Stage 1: the channels of a [C, R, R, R] latent are dimension 0.
        var ss = Open(TrellisLatentKind.SparseStructure, TrellisConditionKind.None, 4.5);
        var ssNorm = TrellisDataset.Open(new[] { Root }, ss.Options with { Normalization = normalization });
        using var z0 = ss.LoadStructureLatent(0);
        using var z1 = ssNorm.LoadStructureLatent(0);
        using var zWant = (z0 - m.reshape(-1, 1, 1, 1)) / s.reshape(-1, 1, 1, 1);
        Assert.Equal(0f, (zWant - z1).abs().max().item<float>());
        Assert.Throws<ArgumentException>(() => normalization.Normalize(z0, channelDim: 1));
    }

    [Fact]
    public void ConditionViewsComeFromTransforms()
    {
        var ds = Open(TrellisLatentKind.SparseStructure, TrellisConditionKind.Image, 4.5);
        for (int i = 0; i < ds.Count; i++)
        {
            var views = ds.ConditionViews(i);
            Assert.Equal(3, views.Count);
            Assert.All(views, v => Assert.True(File.Exists(v)));
        }
    }

    [Fact]
    public void LoadBalancedSplitFollowsTrellis()
    {
        // loads 100, 70, 114, 102: descending 114(2), 102(3), 100(0), 70(1); greedy into the lightest group.
        var g = TrellisBatching.LoadBalancedGroups(new long[] { 100, 70, 114, 102 }, 2);
        Assert.Equal(new[] { 2, 1 }, g[0]);
        Assert.Equal(new[] { 3, 0 }, g[1]);
        // Ties: numpy's stable argsort reversed takes the later index first; the first lightest group wins.
        g = TrellisBatching.LoadBalancedGroups(new long[] { 5, 5, 5 }, 2);
        Assert.Equal(new[] { 2, 0 }, g[0]);
        Assert.Equal(new[] { 1 }, g[1]);
        // equal_size closes a group at count / groups items.
        g = TrellisBatching.LoadBalancedGroups(new long[] { 1, 1, 1, 100 }, 2, equalSize: true);
        Assert.Equal(new[] { 3, 0 }, g[0]);
        Assert.Equal(new[] { 2, 1 }, g[1]);
        Assert.Throws<ArgumentException>(() => TrellisBatching.LoadBalancedGroups(new long[] { 1 }, 2));
    }

    [Fact]
    public void BadDatasetsAreNamed()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-ds-").FullName;
        try
        {
            var opts = new TrellisDatasetOptions { Kind = TrellisLatentKind.StructuredLatent, LatentModel = SlatModel };
            var e = Assert.Throws<FileNotFoundException>(() => TrellisDataset.Open(new[] { dir }, opts));
            Assert.Contains("metadata.csv", e.Message);
            File.WriteAllText(Path.Combine(dir, "metadata.csv"), "sha256,aesthetic_score\nabc,5\n");
            var bad = Assert.Throws<InvalidDataException>(() => TrellisDataset.Open(new[] { dir }, opts));
            Assert.Contains($"'latent_{SlatModel}'", bad.Message);
            Assert.Contains("'num_voxels'", bad.Message);
            File.WriteAllText(Path.Combine(dir, "metadata.csv"), $"sha256,aesthetic_score,latent_{SlatModel},num_voxels,cond_rendered\nabc,high,True,3,True\n");
            bad = Assert.Throws<InvalidDataException>(() => TrellisDataset.Open(new[] { dir }, opts));
            Assert.Contains("line 2", bad.Message);
            Assert.Contains("'aesthetic_score'", bad.Message);

            // A truncated latent file names the file.
            var copy = Path.Combine(dir, "copy");
            CopyDir(Root, copy);
            var victim = Directory.GetFiles(Path.Combine(copy, "latents", SlatModel))[0];
            var bytes = File.ReadAllBytes(victim);
            File.WriteAllBytes(victim, bytes[..(bytes.Length - 40)]);
            var ds = TrellisDataset.Open(new[] { copy }, opts with { MinAestheticScore = 0 });
            int idx = ds.Instances.Select((x, i) => (x, i)).First(p => victim.Contains(p.x.Sha256, StringComparison.Ordinal)).i;
            bad = Assert.Throws<InvalidDataException>(() => ds.LoadStructuredLatent(idx));
            Assert.Contains(Path.GetFileName(victim), bad.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void DatasetConfigsMapOrAreReported()
    {
        var args = new JsonObject { ["latent_model"] = SsModel, ["min_aesthetic_score"] = 4.5, ["image_size"] = 518, ["pretrained_ss_dec"] = "x" };
        var o = TrellisDatasetOptions.FromConfig("ImageConditionedSparseStructureLatent", args, "'config.json'", out var ignored);
        Assert.Equal(TrellisLatentKind.SparseStructure, o.Kind);
        Assert.Equal(TrellisConditionKind.Image, o.Condition);
        Assert.Equal(4.5, o.MinAestheticScore);
        Assert.Equal(new[] { "dataset.args.pretrained_ss_dec" }, ignored);
        var e = Assert.Throws<InvalidDataException>(() => TrellisDatasetOptions.FromConfig("ImageConditionedSLat",
            new JsonObject { ["latent_model"] = 3, ["max_num_voxels"] = -1, ["shuffle"] = true }, "'config.json'", out _));
        Assert.Contains("'dataset.args.latent_model' = 3 is not a string", e.Message);
        Assert.Contains("'dataset.args.max_num_voxels' = -1 is not >= 1", e.Message);
        Assert.Contains("unknown argument(s) 'dataset.args.shuffle'", e.Message);
        Assert.Contains("'config.json'", e.Message);
        Assert.Contains("not supported", Assert.Throws<InvalidDataException>(() => TrellisDatasetOptions.FromConfig("Foo", null, "c", out _)).Message);
    }

    internal static void CopyDir(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to, StringComparison.Ordinal));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to, StringComparison.Ordinal));
    }
}
