using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>
/// How the rows of a sparse tensor are split into independent attention sequences (samples for full attention,
/// windows for swin attention), packed into padded batches: sequences are grouped by length (power-of-two buckets for
/// full attention; equal lengths for swin windows, see <see cref="WindowLengthQuantum"/>), each group padded to its
/// longest member and masked where needed. Built once per coordinate set and partition.
/// </summary>
internal sealed class AttentionPlan
{
    /// <summary>Sequences per padded chunk are limited so that chunk × L × L stays below this.</summary>
    internal static long ChunkScoreElements = 1L << 20;

    internal sealed class Chunk
    {
        public required Tensor Rows;        // [S, L] int64 row indices (padding points at a valid row of the sequence)
        public required Tensor? KeyValid;   // [S, L] bool, null when every sequence has length L
        public required Tensor? ValidFlat;  // [V] int64 positions in the flattened [S*L] that are real rows; null = all
        public required Tensor OutRows;     // [V] int64 the tensor rows of the real positions, in flattened order
        public required long S;
        public required long L;
    }

    public required IReadOnlyList<Chunk> Chunks { get; init; }

    /// <summary><c>[N]</c> int64: where row i of the tensor sits in the concatenation of the chunks' valid outputs.</summary>
    public required Tensor Inverse { get; init; }

    /// <summary>Sequence lengths (for diagnostics and tests).</summary>
    public required long[] SequenceLengths { get; init; }

    /// <summary>
    /// Builds a plan from a row order in which each sequence is contiguous, and the sequence lengths. Sequences are
    /// grouped by power-of-two length buckets, or with <paramref name="lengthQuantum"/> &gt; 0 by length rounded up to
    /// a multiple of it (1: equal lengths only, no padding).
    /// </summary>
    public static AttentionPlan Build(Tensor orderCpu, long[] lengths, Device device, long lengthQuantum = 0)
    {
        long n = orderCpu.shape[0];
        var starts = new long[lengths.Length];
        for (int i = 1; i < lengths.Length; i++) starts[i] = starts[i - 1] + lengths[i - 1];
        var byBucket = new SortedDictionary<int, List<int>>();
        for (int i = 0; i < lengths.Length; i++)
        {
            if (lengths[i] == 0) continue;
            int bucket = lengthQuantum > 0 ? (int)((lengths[i] + lengthQuantum - 1) / lengthQuantum)
                : 64 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(lengths[i] - 1));
            if (!byBucket.TryGetValue(bucket, out var list)) byBucket[bucket] = list = new List<int>();
            list.Add(i);
        }
        var chunks = new List<Chunk>();
        var concat = new List<Tensor>();
        foreach (var seqs in byBucket.Values)
        {
            long l = seqs.Max(i => lengths[i]);
            long per = Math.Max(1, ChunkScoreElements / (l * l));
            for (int c0 = 0; c0 < seqs.Count; c0 += (int)per)
            {
                var part = seqs.Skip(c0).Take((int)per).ToArray();
                long s = part.Length;
                var st = torch.tensor(part.Select(i => starts[i]).ToArray()).unsqueeze(1);   // [S, 1]
                var ln = torch.tensor(part.Select(i => lengths[i]).ToArray()).unsqueeze(1);  // [S, 1]
                var ar = torch.arange(l, dtype: ScalarType.Int64).unsqueeze(0);              // [1, L]
                var valid = ar < ln;                                                         // [S, L]
                var pos = torch.where(valid, st + ar, st.expand(s, l));
                var rows = orderCpu.index_select(0, pos.flatten()).view(s, l);
                bool allValid = part.All(i => lengths[i] == l);
                var validFlat = allValid ? null : valid.flatten().nonzero().squeeze(1);
                var outRows = allValid ? rows.flatten() : rows.flatten().index_select(0, validFlat!);
                concat.Add(outRows);
                chunks.Add(new Chunk
                {
                    OutRows = outRows.to(device).DetachFromDisposeScope(),
                    Rows = rows.to(device).DetachFromDisposeScope(),
                    KeyValid = allValid ? null : valid.to(device).DetachFromDisposeScope(),
                    ValidFlat = validFlat?.to(device).DetachFromDisposeScope(),
                    S = s,
                    L = l,
                });
            }
        }
        var all = concat.Count == 0 ? torch.zeros(0, dtype: ScalarType.Int64) : torch.cat(concat, 0);
        var inverse = torch.empty(n, dtype: ScalarType.Int64);
        if (n > 0) inverse.index_put_(torch.arange(n, dtype: ScalarType.Int64), all);
        return new AttentionPlan { Chunks = chunks, Inverse = inverse.to(device).DetachFromDisposeScope(), SequenceLengths = lengths };
    }

    /// <summary>Full attention: every sample is one sequence.</summary>
    public static AttentionPlan Full(SparseCoordinates c) =>
        c.GetOrAdd("attn_full", () => Build(torch.arange(c.Count, dtype: ScalarType.Int64), c.RowCounts.ToArray(), c.Device));

    /// <summary>
    /// TRELLIS's swin partition (<c>calc_window_partition</c>): a voxel belongs to window <c>floor((coord + shift) / W)</c>
    /// on each axis, within its own sample.
    /// </summary>
    public static AttentionPlan Windowed(SparseCoordinates c, int windowSize, int shift) =>
        c.GetOrAdd($"attn_window_{windowSize}_{shift}_q{WindowLengthQuantum}", () =>
        {
            if (c.Count == 0) return Build(torch.zeros(0, dtype: ScalarType.Int64), Array.Empty<long>(), c.Device, WindowLengthQuantum);
            var co = c.Coords64.cpu();
            var w = (co[.., 1..] + shift).div(windowSize, RoundingMode.floor);               // [N, 3]
            var nw = w.max(0).values + 1;
            var nwv = nw.data<long>().ToArray();
            var key = ((co[.., 0] * nwv[0] + w[.., 0]) * nwv[1] + w[.., 1]) * nwv[2] + w[.., 2];
            var (sortedKeys, order) = key.sort(stable: true);
            var (_, _, counts) = sortedKeys.unique_consecutive(return_counts: true);
            return Build(order, counts!.data<long>().ToArray(), c.Device, WindowLengthQuantum);
        });

    /// <summary>
    /// Swin windows are grouped by length rounded up to a multiple of this (0: power-of-two buckets). The default 1
    /// groups windows of equal length only: no padding and no mask. Window lengths spread over 1 … W³ (on an irregular
    /// 19 k-voxel shell: 116–128 distinct lengths among ≈ 170 windows), so power-of-two buckets computed 35–40 % padded
    /// scores; the ≈ 120 separate SDPA calls cost less than that (<c>trunk-profile --quantum</c>).
    /// </summary>
    internal static long WindowLengthQuantum = 1;
}

/// <summary>Scaled dot-product attention over packed variable-length sequences.</summary>
internal static class SparseAttention
{
    /// <summary>Score elements (heads × queries × keys) computed at once by the explicit float64 path.</summary>
    internal static long ExplicitScoreElements = 1L << 24;

    /// <summary>
    /// softmax(q·kᵀ/√D)·v for padded batches: q <c>[S, Lq, H, D]</c>, k <c>[S, Lk, H, D]</c>, v <c>[S, Lk, H, Dv]</c>,
    /// <paramref name="keyValid"/> <c>[S, Lk]</c> (false = padding) → <c>[S, Lq, H, Dv]</c>. Float64 is computed
    /// explicitly (query-chunked); other dtypes use libtorch's fused SDPA (whose default scale is 1/√D).
    /// </summary>
    public static Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor? keyValid)
    {
        var qh = q.permute(0, 2, 1, 3);
        var kh = k.permute(0, 2, 1, 3);
        var vh = v.permute(0, 2, 1, 3);
        long s = q.shape[0], lq = q.shape[1], h = q.shape[2], d = q.shape[3], lk = k.shape[1];
        Tensor o;
        if (q.dtype == ScalarType.Float64)
        {
            double scale = 1.0 / Math.Sqrt(d);
            var kt = kh.transpose(-2, -1);
            var mask = keyValid is null ? null : keyValid.logical_not().view(s, 1, 1, lk);
            long perChunk = Math.Max(1, ExplicitScoreElements / Math.Max(1, s * h * lk));
            if (perChunk >= lq)
                o = Explicit(qh, kt, vh, mask, scale);
            else
            {
                var parts = new List<Tensor>();
                for (long a = 0; a < lq; a += perChunk)
                {
                    long a0 = a;
                    parts.Add(Precision.Scoped(() => Explicit(qh.narrow(2, a0, Math.Min(lq, a0 + perChunk) - a0), kt, vh, mask, scale)));
                }
                o = torch.cat(parts, 2);
            }
        }
        else
        {
            var mask = keyValid?.view(s, 1, 1, lk);
            o = DenseAttention.FusedSdpa(qh, kh, vh, mask);
        }
        return o.permute(0, 2, 1, 3);
    }

    private static Tensor Explicit(Tensor qh, Tensor kt, Tensor vh, Tensor? maskOut, double scale)
    {
        var scores = qh.matmul(kt) * scale;
        if (maskOut is not null) scores = scores.masked_fill(maskOut, double.NegativeInfinity);
        return scores.softmax(-1).matmul(vh);
    }

    /// <summary>Self-attention of packed rows q, k, v <c>[N, H, D]</c> within the sequences of <paramref name="plan"/>.</summary>
    public static Tensor SelfAttention(Tensor q, Tensor k, Tensor v, AttentionPlan plan)
    {
        long h = q.shape[1], dv = v.shape[2];
        if (plan.Chunks.Count == 0) return torch.zeros(new[] { q.shape[0], h, dv }, dtype: v.dtype, device: v.device);
        var outs = new List<Tensor>(plan.Chunks.Count);
        foreach (var c in plan.Chunks)
        {
            outs.Add(Precision.Scoped(() =>
            {
                var idx = c.Rows.On(q.device).view(-1);
                var qi = q.index_select(0, idx).view(c.S, c.L, h, -1);
                var ki = k.index_select(0, idx).view(c.S, c.L, h, -1);
                var vi = v.index_select(0, idx).view(c.S, c.L, h, -1);
                var o = Attend(qi, ki, vi, c.KeyValid?.On(q.device)).reshape(c.S * c.L, h, dv);
                return c.ValidFlat is null ? o : o.index_select(0, c.ValidFlat.On(q.device));
            }));
        }
        var cat = outs.Count == 1 ? outs[0] : torch.cat(outs, 0);
        return cat.index_select(0, plan.Inverse.On(cat.device));
    }

    /// <summary>
    /// Self-attention of packed rows <paramref name="qkv"/> <c>[N, 3, H, D]</c> (q, k, v of each row, as the qkv layer
    /// writes them) within the sequences of <paramref name="plan"/> → <c>[N, H, D]</c>: one gather of the packed rows per
    /// chunk, and each chunk's output written straight to its rows.
    /// </summary>
    public static Tensor SelfAttention(Tensor qkv, AttentionPlan plan)
    {
        long n = qkv.shape[0], h = qkv.shape[2], d = qkv.shape[3];
        var result = torch.empty(new[] { n, h, d }, dtype: qkv.dtype, device: qkv.device);
        foreach (var c in plan.Chunks)
        {
            using var scope = torch.NewDisposeScope();
            var g = qkv.index_select(0, c.Rows.On(qkv.device).view(-1)).view(c.S, c.L, 3, h, d);
            var o = Attend(g.select(2, 0), g.select(2, 1), g.select(2, 2), c.KeyValid?.On(qkv.device)).reshape(c.S * c.L, h, d);
            if (c.ValidFlat is not null) o = o.index_select(0, c.ValidFlat.On(qkv.device));
            result.index_copy_(0, c.OutRows.On(qkv.device), o);
        }
        return result;
    }

    /// <summary>
    /// Cross-attention of each sample's rows q <c>[N, H, D]</c> to that sample's context tokens k, v <c>[B, L, H, D]</c>.
    /// </summary>
    public static Tensor CrossAttention(Tensor q, Tensor k, Tensor v, SparseCoordinates coords)
    {
        var outs = new List<Tensor>();
        for (int b = 0; b < coords.BatchSize; b++)
        {
            long start = coords.RowOffsets[b], len = coords.RowCounts[b];
            if (len == 0) continue;
            int b0 = b;
            outs.Add(Precision.Scoped(() => Attend(q.narrow(0, start, len).unsqueeze(0), k.narrow(0, b0, 1), v.narrow(0, b0, 1), null).squeeze(0)));
        }
        if (outs.Count == 0) return torch.zeros(new[] { 0, q.shape[1], v.shape[3] }, dtype: v.dtype, device: v.device);
        return outs.Count == 1 ? outs[0] : torch.cat(outs, 0);
    }
}

/// <summary>Attention partition of a sparse self-attention layer.</summary>
internal enum SparseAttentionMode
{
    /// <summary>Each sample attends over all of its rows.</summary>
    Full,
    /// <summary>Swin: windows of <c>W³</c> voxels, shifted by s (TRELLIS's "windowed" / attn_mode "swin").</summary>
    Windowed,
}

/// <summary>
/// TRELLIS's <c>SparseMultiHeadAttention</c> (self: <c>to_qkv</c>; cross: <c>to_q</c> + <c>to_kv</c> on dense context
/// <c>[B, L, Cctx]</c>), optional QK RMS norm (<c>q_rms_norm</c>, <c>k_rms_norm</c>), <c>to_out</c>.
/// </summary>
internal sealed class SparseMultiHeadAttention : nn.Module
{
#pragma warning disable IDE1006
    public Linear? to_qkv;
    public Linear? to_q;
    public Linear? to_kv;
    public MultiHeadRMSNorm? q_rms_norm;
    public MultiHeadRMSNorm? k_rms_norm;
    public Linear to_out;
#pragma warning restore IDE1006
    private readonly CrossAttentionKvCache _kvCache = new();

    public SparseMultiHeadAttention(long channels, long numHeads, long? ctxChannels, bool cross, SparseAttentionMode mode,
        int windowSize, int shiftWindow, bool qkvBias, bool qkRmsNorm, ScalarType dtype, Device? device)
        : base(nameof(SparseMultiHeadAttention))
    {
        if (channels % numHeads != 0)
            throw new ArgumentException($"channels ({channels}) must be divisible by num_heads ({numHeads}).", nameof(numHeads));
        if (cross && mode != SparseAttentionMode.Full)
            throw new ArgumentException("cross-attention supports only full attention.", nameof(mode));
        if (mode == SparseAttentionMode.Windowed && windowSize < 1)
            throw new ArgumentException($"windowed attention needs window_size >= 1, found {windowSize}.", nameof(windowSize));
        Channels = channels;
        NumHeads = numHeads;
        CtxChannels = ctxChannels ?? channels;
        IsCross = cross;
        Mode = mode;
        WindowSize = windowSize;
        ShiftWindow = shiftWindow;
        if (!cross) to_qkv = nn.Linear(channels, channels * 3, qkvBias, device, dtype);
        else
        {
            to_q = nn.Linear(channels, channels, qkvBias, device, dtype);
            to_kv = nn.Linear(CtxChannels, channels * 2, qkvBias, device, dtype);
        }
        if (qkRmsNorm)
        {
            q_rms_norm = new MultiHeadRMSNorm(channels / numHeads, numHeads, dtype, device);
            k_rms_norm = new MultiHeadRMSNorm(channels / numHeads, numHeads, dtype, device);
        }
        to_out = nn.Linear(channels, channels, true, device, dtype);
        RegisterComponents();
    }

    public long Channels { get; }
    public long NumHeads { get; }
    public long CtxChannels { get; }
    public bool IsCross { get; }
    public SparseAttentionMode Mode { get; }
    public int WindowSize { get; }
    public int ShiftWindow { get; }

    /// <summary>The cross-attention K/V cache (used only under no_grad).</summary>
    internal CrossAttentionKvCache KvCache => _kvCache;

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing) _kvCache.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>Self-attention.</summary>
    public SparseTensor Forward(SparseTensor x)
    {
        if (IsCross) throw new InvalidOperationException("this is a cross-attention layer: pass the context.");
        long n = x.Count, h = NumHeads;
        var qkv = to_qkv!.forward(x.Feats).view(n, 3, h, -1);
        if (Mode == SparseAttentionMode.Windowed && q_rms_norm is null)
        {
            var ow = SparseAttention.SelfAttention(qkv, AttentionPlan.Windowed(x.Coordinates, WindowSize, ShiftWindow)).view(n, Channels);
            return x.ReplaceFeats(to_out.forward(ow));
        }
        var q = qkv[.., 0];
        var k = qkv[.., 1];
        var v = qkv[.., 2];
        if (q_rms_norm is not null)
        {
            q = q_rms_norm.forward(q);
            k = k_rms_norm!.forward(k);
        }
        var plan = Mode == SparseAttentionMode.Full
            ? AttentionPlan.Full(x.Coordinates)
            : AttentionPlan.Windowed(x.Coordinates, WindowSize, ShiftWindow);
        var o = SparseAttention.SelfAttention(q, k, v, plan).reshape(n, Channels);
        return x.ReplaceFeats(to_out.forward(o));
    }

    /// <summary>Cross-attention of every sample's rows to its own context tokens <c>[B, L, CtxChannels]</c>.</summary>
    public SparseTensor Forward(SparseTensor x, Tensor context)
    {
        if (!IsCross) throw new InvalidOperationException("this is a self-attention layer.");
        if (context.dim() != 3 || context.shape[0] != x.BatchSize || context.shape[2] != CtxChannels)
            throw new ArgumentException($"context must be [B={x.BatchSize}, L, {CtxChannels}], found [{string.Join(", ", context.shape)}].", nameof(context));
        long n = x.Count, h = NumHeads, b = context.shape[0], l = context.shape[1];
        var q = to_q!.forward(x.Feats).view(n, h, -1);
        var kv = _kvCache.Project(to_kv!, context, training).view(b, l, 2, h, -1);
        var k = kv[.., .., 0];
        var v = kv[.., .., 1];
        if (q_rms_norm is not null)
        {
            q = q_rms_norm.forward(q);
            k = k_rms_norm!.forward(k);
        }
        var o = SparseAttention.CrossAttention(q, k, v, x.Coordinates).reshape(n, Channels);
        return x.ReplaceFeats(to_out.forward(o));
    }
}
