using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>The attention settings of one sparse transformer block.</summary>
internal readonly record struct SparseBlockAttention(SparseAttentionMode Mode, int WindowSize, int ShiftWindow)
{
    public static SparseBlockAttention Full => new(SparseAttentionMode.Full, 0, 0);

    /// <summary>
    /// TRELLIS's <c>block_attn_config</c> for block <paramref name="index"/>: "full", or "swin" (windowed with shift
    /// <c>(W // 2)·(i % 2)</c>). The serialized modes need TRELLIS's vox2seq CUDA extension and are not supported.
    /// </summary>
    public static SparseBlockAttention ForBlock(string attnMode, int? windowSize, int index) => attnMode switch
    {
        "full" => Full,
        "swin" => windowSize is { } w && w >= 1
            ? new SparseBlockAttention(SparseAttentionMode.Windowed, w, w / 2 * (index % 2))
            : throw new ArgumentException($"attn_mode 'swin' needs window_size >= 1, found {windowSize?.ToString() ?? "null"}.", nameof(windowSize)),
        "shift_window" or "shift_sequence" or "shift_order" =>
            throw new ArgumentException($"attn_mode '{attnMode}' (serialized attention) is not supported: it needs TRELLIS's vox2seq CUDA extension and no released config uses it.", nameof(attnMode)),
        _ => throw new ArgumentException($"unknown attn_mode '{attnMode}' (expected 'full' or 'swin').", nameof(attnMode)),
    };
}

/// <summary>
/// TRELLIS's <c>SparseTransformerBlock</c>: <c>x += attn(norm1(x)); x += mlp(norm2(x))</c>, LayerNorm32 eps 1e-6 (no affine
/// unless <c>ln_affine</c>).
/// </summary>
internal sealed class SparseTransformerBlock : nn.Module
{
#pragma warning disable IDE1006
    public LayerNorm32 norm1;
    public LayerNorm32 norm2;
    public SparseMultiHeadAttention attn;
    public FeedForwardNet mlp;
#pragma warning restore IDE1006

    public SparseTransformerBlock(long channels, long numHeads, double mlpRatio, SparseBlockAttention attention,
        bool qkRmsNorm, bool qkvBias, bool lnAffine, ScalarType dtype, Device? device)
        : base(nameof(SparseTransformerBlock))
    {
        norm1 = new LayerNorm32(channels, lnAffine, 1e-6, dtype, device);
        norm2 = new LayerNorm32(channels, lnAffine, 1e-6, dtype, device);
        attn = new SparseMultiHeadAttention(channels, numHeads, null, false, attention.Mode, attention.WindowSize, attention.ShiftWindow,
            qkvBias, qkRmsNorm, dtype, device);
        mlp = new FeedForwardNet(channels, mlpRatio, dtype, device);
        RegisterComponents();
    }

    public SparseTensor Forward(SparseTensor x)
    {
        var f = x.Feats;
        var a = attn.Forward(x.ReplaceFeats(norm1.forward(f))).Feats;
        f = torch.is_grad_enabled() ? f + a : a.add_(f);   // without autograd into the projection's fresh output
        f = mlp.AddForward(f, norm2.forward);              // f is this block's own tensor: updated in place without autograd
        return x.ReplaceFeats(f);
    }
}

/// <summary>
/// TRELLIS's <c>ModulatedSparseTransformerCrossBlock</c>: adaLN-modulated self-attention and MLP around an unmodulated
/// cross-attention. <c>mod = adaLN_modulation(t_emb)</c> chunks as shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
/// gate_mlp; norm1/norm3 have no affine, norm2 is affine; eps 1e-6.
/// </summary>
internal sealed class ModulatedSparseTransformerCrossBlock : nn.Module
{
#pragma warning disable IDE1006
    public LayerNorm32 norm1;
    public LayerNorm32 norm2;
    public LayerNorm32 norm3;
    public SparseMultiHeadAttention self_attn;
    public SparseMultiHeadAttention cross_attn;
    public FeedForwardNet mlp;
    public Sequential? adaLN_modulation;
#pragma warning restore IDE1006

    public ModulatedSparseTransformerCrossBlock(long channels, long ctxChannels, long numHeads, double mlpRatio, SparseBlockAttention attention,
        bool qkRmsNorm, bool qkRmsNormCross, bool qkvBias, bool shareMod, ScalarType dtype, Device? device)
        : base(nameof(ModulatedSparseTransformerCrossBlock))
    {
        Channels = channels;
        norm1 = new LayerNorm32(channels, false, 1e-6, dtype, device);
        norm2 = new LayerNorm32(channels, true, 1e-6, dtype, device);
        norm3 = new LayerNorm32(channels, false, 1e-6, dtype, device);
        self_attn = new SparseMultiHeadAttention(channels, numHeads, null, false, attention.Mode, attention.WindowSize, attention.ShiftWindow,
            qkvBias, qkRmsNorm, dtype, device);
        cross_attn = new SparseMultiHeadAttention(channels, numHeads, ctxChannels, true, SparseAttentionMode.Full, 0, 0,
            qkvBias, qkRmsNormCross, dtype, device);
        mlp = new FeedForwardNet(channels, mlpRatio, dtype, device);
        if (!shareMod)
            adaLN_modulation = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(channels, 6 * channels, true, device, dtype)));
        RegisterComponents();
    }

    public long Channels { get; }

    /// <param name="x">Tokens.</param>
    /// <param name="mod">t_emb <c>[B, C]</c>, or with share_mod the shared 6C modulation <c>[B, 6C]</c>.</param>
    /// <param name="context">Condition tokens <c>[B, L, Cctx]</c>.</param>
    public SparseTensor Forward(SparseTensor x, Tensor mod, Tensor context)
    {
        var m = adaLN_modulation is null ? mod : adaLN_modulation.forward(mod);
        var rows = x.PerRowOrShared(m.As(x.Dtype));                   // [N, 6C], or [1, 6C] broadcast for one sample
        var parts = rows.chunk(6, 1);
        Tensor shiftMsa = parts[0], scaleMsa = parts[1], gateMsa = parts[2], shiftMlp = parts[3], scaleMlp = parts[4], gateMlp = parts[5];
        var f = x.Feats;
        var h = AdaLn.Modulate(norm1.forward(f), shiftMsa, scaleMsa);
        h = self_attn.Forward(x.ReplaceFeats(h)).Feats;
        f = AdaLn.GatedAdd(f, h, gateMsa);
        h = norm2.forward(f);
        h = cross_attn.Forward(x.ReplaceFeats(h), context).Feats;
        f = f + h;
        h = AdaLn.Modulate(norm3.forward(f), shiftMlp, scaleMlp);
        h = mlp.forward(h);
        f = AdaLn.GatedAdd(f, h, gateMlp);
        return x.ReplaceFeats(f);
    }
}

/// <summary>Per-sample vectors applied to the rows of a sparse tensor.</summary>
internal static class SparseRowBroadcast
{
    /// <summary>
    /// <see cref="SparseTensor.PerRow"/> for a batch of several samples; for one sample the <c>[1, ...]</c> tensor itself,
    /// which broadcasts over the rows in the same elementwise arithmetic without materialising <c>[N, ...]</c> (for the
    /// stage-2 flow's 6C modulation that copy is 25 M elements per block).
    /// </summary>
    public static Tensor PerRowOrShared(this SparseTensor x, Tensor perSample) =>
        x.BatchSize == 1 && perSample.shape[0] == 1 ? perSample : x.PerRow(perSample);
}
