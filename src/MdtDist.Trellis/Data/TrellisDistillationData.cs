using MdtDist.Core.Flow;
using MdtDist.Core.IO;
using MdtDist.Core.Training;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Data;

/// <summary>
/// Training batches from a <see cref="TrellisDataset"/>, formed as TRELLIS forms them: a seeded shuffle per epoch (each
/// process takes every <c>worldSize</c>-th index from <c>rank</c>), dense latents stacked <c>[B, C, R, R, R]</c>,
/// structured latents concatenated into one sparse batch (rows per sample, batch index in the first coordinate column),
/// a random condition view per sample encoded by the condition model, and zeros as the negative condition (TRELLIS's
/// image convention). The batch of a step depends only on the seed, the step and the rank, so a resumed run sees the
/// same data.
/// </summary>
public sealed class TrellisDistillationData : IDistillationDataSource
{
    private readonly Func<Tensor, Tensor>? _encodeImages;
    private readonly string? _featureCache;

    /// <summary>Creates the data source.</summary>
    /// <param name="dataset">The filtered dataset.</param>
    /// <param name="batchSize">Samples per batch and process.</param>
    /// <param name="seed">Seed of the shuffle and the view choice.</param>
    /// <param name="encodeImages">For image-conditioned datasets: premultiplied RGB <c>[N, 3, S, S]</c> in [0, 1] → condition
    /// tokens <c>[N, L, C]</c> (e.g. <see cref="EncodeWith"/>); null for unconditional datasets.</param>
    /// <param name="featureCache">A folder where encoded views are kept (<c>&lt;sha256&gt;_&lt;view&gt;.safetensors</c>) and reused, or null.</param>
    /// <param name="rank">This process's rank.</param>
    /// <param name="worldSize">Number of processes.</param>
    /// <exception cref="ArgumentException">An empty dataset, a batch size &lt; 1, a rank outside the world, or an image-conditioned dataset without an encoder.</exception>
    public TrellisDistillationData(TrellisDataset dataset, int batchSize, long seed, Func<Tensor, Tensor>? encodeImages = null,
        string? featureCache = null, int rank = 0, int worldSize = 1)
    {
        Dataset = dataset ?? throw new ArgumentNullException(nameof(dataset));
        if (dataset.Count == 0) throw new ArgumentException("the dataset has no instance after filtering.", nameof(dataset));
        if (batchSize < 1) throw new ArgumentException($"batchSize must be >= 1, got {batchSize}.", nameof(batchSize));
        if (worldSize < 1 || rank < 0 || rank >= worldSize) throw new ArgumentException($"rank {rank} is outside a world of {worldSize}.", nameof(rank));
        if (dataset.Options.Condition == TrellisConditionKind.Image && encodeImages is null)
            throw new ArgumentException("an image-conditioned dataset needs an image encoder (e.g. TrellisDistillationData.EncodeWith(dinov2)).", nameof(encodeImages));
        if (dataset.Options.Condition == TrellisConditionKind.Text)
            throw new NotSupportedException("text-conditioned TRELLIS datasets are not supported by this data source yet.");
        BatchSize = batchSize;
        Seed = seed;
        Rank = rank;
        WorldSize = worldSize;
        _encodeImages = encodeImages;
        _featureCache = featureCache;
    }

    /// <summary>The dataset.</summary>
    public TrellisDataset Dataset { get; }

    /// <summary>Samples per batch and process.</summary>
    public int BatchSize { get; }

    /// <summary>The seed.</summary>
    public long Seed { get; }

    /// <summary>This process's rank.</summary>
    public int Rank { get; }

    /// <summary>Number of processes.</summary>
    public int WorldSize { get; }

    /// <summary>The dataset indices of the samples of step <paramref name="step"/> on this rank, with the view drawn for each.</summary>
    public IReadOnlyList<(int Index, int ViewSeed)> Indices(long step)
    {
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step), step, "step must be >= 0.");
        int n = Dataset.Count;
        long perEpoch = (n - Rank + WorldSize - 1) / WorldSize;
        if (perEpoch == 0) perEpoch = 1; // fewer instances than ranks: this rank reuses index 0 of the shard below
        var result = new List<(int, int)>(BatchSize);
        int[]? perm = null;
        long permEpoch = -1;
        for (int j = 0; j < BatchSize; j++)
        {
            long q = step * BatchSize + j;
            long epoch = q / perEpoch, pos = q % perEpoch;
            if (epoch != permEpoch)
            {
                var g = new Generator((ulong)(Seed + epoch));
                using var p = torch.randperm(n, generator: g, dtype: ScalarType.Int64);
                perm = p.data<long>().Select(x => (int)x).ToArray();
                permEpoch = epoch;
            }
            long at = Math.Min(Rank + pos * WorldSize, n - 1);
            result.Add((perm![at], unchecked((int)(Seed * 1_000_003 + step * 8191 + (Rank * BatchSize + j)))));
        }
        return result;
    }

    /// <inheritdoc />
    public DistillationBatch GetBatch(long step)
    {
        var picks = Indices(step);
        using var scope = torch.NewDisposeScope();
        Latent x0;
        if (Dataset.Options.Kind == TrellisLatentKind.SparseStructure)
        {
            var zs = picks.Select(p => Dataset.LoadStructureLatent(p.Index)).ToArray();
            x0 = Latent.Dense(torch.stack(zs).MoveToOuterDisposeScope());
        }
        else
        {
            var coords = new List<Tensor>();
            var feats = new List<Tensor>();
            for (int b = 0; b < picks.Count; b++)
            {
                var (c, f) = Dataset.LoadStructuredLatent(picks[b].Index);
                coords.Add(torch.cat(new[] { torch.full(c.shape[0], 1, b, dtype: ScalarType.Int32), c }, 1));
                feats.Add(f);
            }
            var st = new SparseTensor(torch.cat(feats, 0), torch.cat(coords, 0), 64, picks.Count);
            x0 = st.MoveToOuterDisposeScope().ToLatent();
        }
        Tensor? cond = null, neg = null;
        if (Dataset.Options.Condition == TrellisConditionKind.Image)
        {
            var tokens = picks.Select(p => ConditionTokens(p.Index, p.ViewSeed)).ToArray();
            cond = torch.cat(tokens, 0);
            neg = torch.zeros(new[] { 1L, cond.shape[1], cond.shape[2] }, dtype: cond.dtype, device: cond.device);
            cond.MoveToOuterDisposeScope();
            neg.MoveToOuterDisposeScope();
        }
        return new DistillationBatch(x0, cond, neg);
    }

    private Tensor ConditionTokens(int index, int viewSeed)
    {
        var views = Dataset.ConditionViews(index);
        int view = new Random(viewSeed).Next(views.Count);
        var sha = Dataset.Instances[index].Sha256;
        string? cached = _featureCache is null ? null : Path.Combine(_featureCache, $"{sha}_{view}.safetensors");
        if (cached is not null && File.Exists(cached))
        {
            var d = SafeTensors.Load(cached);
            if (d.TryGetValue("tokens", out var t) && t.dim() == 3) return t;
            foreach (var v in d.Values) v.Dispose();
        }
        using var image = TrellisConditionImages.Load(views[view], Dataset.Options.ImageSize);
        Tensor tokens;
        using (torch.no_grad()) tokens = _encodeImages!(image.unsqueeze(0));
        if (cached is not null)
        {
            using var cpu = tokens.cpu();
            SafeTensors.Save(cached, new Dictionary<string, Tensor> { ["tokens"] = cpu });
        }
        return tokens;
    }

    /// <summary>
    /// An encoder for <c>encodeImages</c>: ImageNet normalisation, then DINOv2's layer-normed tokens (TRELLIS's
    /// <c>encode_image</c>), in the model's dtype and on its device.
    /// </summary>
    public static Func<Tensor, Tensor> EncodeWith(Conditioning.Dinov2Model dinov2)
    {
        ArgumentNullException.ThrowIfNull(dinov2);
        return images =>
        {
            using var scope = torch.NewDisposeScope();
            var x = Conditioning.ImageNet.Normalize(images.to(dinov2.DType, dinov2.Device));
            return dinov2.forward(x).MoveToOuterDisposeScope();
        };
    }

    /// <summary>
    /// TRELLIS's split of a batch into <paramref name="parts"/> micro-batches (<c>batch_split</c>): dense batches in
    /// consecutive groups, sparse batches by <see cref="TrellisBatching.LoadBalancedGroups"/> over the voxel counts.
    /// Use it as <see cref="TrainingOptions.BatchSplitter"/>.
    /// </summary>
    public static IReadOnlyList<DistillationBatch> Split(DistillationBatch batch, int parts)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.X0.Layout is not SparseLatentLayout) return batch.Split(parts);
        var st = SparseTensor.FromLatent(batch.X0);
        var ranges = st.RowRanges;
        var groups = TrellisBatching.LoadBalancedGroups(ranges.Select(r => r.Length).ToArray(), parts);
        var result = new List<DistillationBatch>(groups.Count);
        foreach (var g in groups)
        {
            var coords = new List<Tensor>();
            var feats = new List<Tensor>();
            for (int k = 0; k < g.Count; k++)
            {
                var (start, len) = ranges[g[k]];
                var c = st.Coords.narrow(0, start, len).clone();
                c[.., 0] = k;
                coords.Add(c);
                feats.Add(st.Feats.narrow(0, start, len));
            }
            var sub = new SparseTensor(torch.cat(feats, 0), torch.cat(coords, 0), st.Coordinates.Resolution, g.Count);
            Tensor? Pick(Tensor? t) => t is null ? null : t.shape[0] == batch.BatchSize && batch.BatchSize > 1
                ? t.index_select(0, torch.tensor(g.Select(i => (long)i).ToArray(), device: t.device)) : t;
            result.Add(new DistillationBatch(sub.ToLatent(), Pick(batch.Condition), batch.NegativeCondition));
        }
        return result;
    }
}
