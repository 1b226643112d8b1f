using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Modules;

/// <summary>Dense multi-head attention on TRELLIS's <c>[B, L, H, D]</c> layout.</summary>
internal static class DenseAttention
{
    /// <summary>Resolves <see cref="AttentionBackend.Auto"/> for tensors like <paramref name="q"/>.</summary>
    public static AttentionBackend Resolve(AttentionBackend backend, Tensor q) => backend switch
    {
        AttentionBackend.Auto => q.dtype != ScalarType.Float64 ? AttentionBackend.Sdpa : AttentionBackend.Math,
        _ => backend,
    };

    /// <summary>
    /// libtorch's fused SDPA (default scale 1/√D) on <c>[B, H, L, D]</c> tensors, <paramref name="mask"/> true where a key
    /// is attended. bfloat16 / float16 inputs on the CPU are first copied head-major contiguous: the flash kernel gives
    /// the same values and runs 5–14 % faster on them at the flows' 1,374–4,096 keys, neutral for short windows
    /// (docs/trellis-cpu-bf16.md); float32 passes the views as they are.
    /// </summary>
    public static Tensor FusedSdpa(Tensor qh, Tensor kh, Tensor vh, Tensor? mask = null, bool causal = false)
    {
        if (qh.dtype is ScalarType.BFloat16 or ScalarType.Float16 && qh.device_type == DeviceType.CPU)
        {
            using var scope = torch.NewDisposeScope();
            return F.scaled_dot_product_attention(qh.contiguous(), kh.contiguous(), vh.contiguous(), mask, is_casual: causal)
                .MoveToOuterDisposeScope();
        }
        return F.scaled_dot_product_attention(qh, kh, vh, mask, is_casual: causal);
    }

    /// <summary>
    /// softmax(q·kᵀ/√D)·v with q <c>[B, Lq, H, D]</c>, k <c>[B, Lk, H, D]</c>, v <c>[B, Lk, H, Dv]</c>; returns <c>[B, Lq, H, Dv]</c>.
    /// With <paramref name="causal"/> (Lq = Lk), query i attends to keys j ≤ i only.
    /// </summary>
    public static Tensor Compute(Tensor q, Tensor k, Tensor v, AttentionBackend backend, bool causal = false)
    {
        using var scope = torch.NewDisposeScope();
        var qh = q.permute(0, 2, 1, 3);
        var kh = k.permute(0, 2, 1, 3);
        var vh = v.permute(0, 2, 1, 3);
        Tensor o;
        if (Resolve(backend, q) == AttentionBackend.Sdpa)
        {
            // SDPA's default scale is 1/sqrt(D), the scale TRELLIS uses.
            o = FusedSdpa(qh, kh, vh, null, causal);
        }
        else
        {
            double scale = 1.0 / System.Math.Sqrt(q.shape[^1]);
            var w = torch.matmul(qh, kh.transpose(-2, -1)) * scale;
            if (causal)
            {
                var future = torch.ones(w.shape[^2], w.shape[^1], dtype: ScalarType.Bool, device: w.device).triu(1);
                w = w.masked_fill(future, double.NegativeInfinity);
            }
            w = torch.softmax(w, -1);
            o = torch.matmul(w, vh);
        }
        return o.permute(0, 2, 1, 3).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// TRELLIS's dense <c>MultiHeadAttention</c> ("full" mode). Self-attention: <c>to_qkv</c> viewed as <c>[.., 3, H, D]</c>;
/// cross-attention: <c>to_q</c> viewed <c>[.., H, D]</c> and <c>to_kv</c> (from the context width) viewed <c>[.., 2, H, D]</c>.
/// Optional QK RMS norm (<c>q_rms_norm</c>, <c>k_rms_norm</c>), output projection <c>to_out</c>.
/// </summary>
internal sealed class MultiHeadAttention : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Linear? to_qkv;
    private readonly Linear? to_q;
    private readonly Linear? to_kv;
    private readonly MultiHeadRMSNorm? q_rms_norm;
    private readonly MultiHeadRMSNorm? k_rms_norm;
    private readonly Linear to_out;
#pragma warning restore IDE1006
    private readonly CrossAttentionKvCache _kvCache = new();

    public MultiHeadAttention(long channels, long numHeads, long? ctxChannels, bool cross, bool qkvBias, bool qkRmsNorm, ScalarType dtype, Device? device)
        : base(nameof(MultiHeadAttention))
    {
        if (numHeads < 1 || channels % numHeads != 0)
            throw new ArgumentException($"channels ({channels}) must be a positive multiple of num_heads ({numHeads}).", nameof(numHeads));
        Channels = channels;
        NumHeads = numHeads;
        HeadDim = channels / numHeads;
        CtxChannels = ctxChannels ?? channels;
        IsCross = cross;
        if (!cross)
        {
            to_qkv = nn.Linear(channels, channels * 3, hasBias: qkvBias, device: device, dtype: dtype);
        }
        else
        {
            to_q = nn.Linear(channels, channels, hasBias: qkvBias, device: device, dtype: dtype);
            to_kv = nn.Linear(CtxChannels, channels * 2, hasBias: qkvBias, device: device, dtype: dtype);
        }
        if (qkRmsNorm)
        {
            q_rms_norm = new MultiHeadRMSNorm(HeadDim, numHeads, dtype, device);
            k_rms_norm = new MultiHeadRMSNorm(HeadDim, numHeads, dtype, device);
        }
        to_out = nn.Linear(channels, channels, device: device, dtype: dtype);
        RegisterComponents();
    }

    public long Channels { get; }
    public long NumHeads { get; }
    public long HeadDim { get; }
    public long CtxChannels { get; }
    public bool IsCross { get; }
    public AttentionBackend Backend { get; set; } = AttentionBackend.Auto;

    /// <summary>The torso Linear layers (converted by fp16 / bf16 torso precision).</summary>
    internal IEnumerable<Linear> Linears()
    {
        if (to_qkv is not null) yield return to_qkv;
        if (to_q is not null) yield return to_q;
        if (to_kv is not null) yield return to_kv;
        yield return to_out;
    }

    /// <summary>The cross-attention K/V cache (used only under no_grad).</summary>
    internal CrossAttentionKvCache KvCache => _kvCache;

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing) _kvCache.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>x <c>[B, L, C]</c>; context <c>[B, Lkv, Cctx]</c> for cross-attention (ignored for self-attention).</summary>
    public override Tensor forward(Tensor x, Tensor? context)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], l = x.shape[1];
        Tensor q, k, v;
        if (!IsCross)
        {
            var qkv = to_qkv!.forward(x).reshape(b, l, 3, NumHeads, -1);
            var parts = qkv.unbind(2);
            (q, k, v) = (parts[0], parts[1], parts[2]);
        }
        else
        {
            if (context is null) throw new ArgumentException("cross-attention needs a context tensor.", nameof(context));
            long lkv = context.shape[1];
            q = to_q!.forward(x).reshape(b, l, NumHeads, -1);
            var kv = _kvCache.Project(to_kv!, context, training).reshape(b, lkv, 2, NumHeads, -1);
            var parts = kv.unbind(2);
            (k, v) = (parts[0], parts[1]);
        }
        if (q_rms_norm is not null)
        {
            q = q_rms_norm.forward(q);
            k = k_rms_norm!.forward(k);
        }
        var h = DenseAttention.Compute(q, k, v, Backend);
        h = h.reshape(b, l, -1);
        return to_out.forward(h).MoveToOuterDisposeScope();
    }
}
