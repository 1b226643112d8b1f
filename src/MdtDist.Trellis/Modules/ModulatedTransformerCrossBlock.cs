using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// TRELLIS's <c>ModulatedTransformerCrossBlock</c> (adaLN self-attention + cross-attention + MLP). With
/// <c>shift, scale, gate</c> chunks of the 6C modulation (order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp):
/// <c>x += gate_msa·SelfAttn(LN1(x)(1+scale_msa)+shift_msa)</c>; <c>x += CrossAttn(LN2(x), ctx)</c>;
/// <c>x += gate_mlp·MLP(LN3(x)(1+scale_mlp)+shift_mlp)</c>. LN eps 1e-6; only <c>norm2</c> is affine.
/// With <c>share_mod</c> the block has no <c>adaLN_modulation</c> and receives the 6C vector itself.
/// </summary>
internal sealed class ModulatedTransformerCrossBlock : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly LayerNorm32 norm1;
    private readonly LayerNorm32 norm2;
    private readonly LayerNorm32 norm3;
    private readonly MultiHeadAttention self_attn;
    private readonly MultiHeadAttention cross_attn;
    private readonly FeedForwardNet mlp;
    private readonly Sequential? adaLN_modulation;
#pragma warning restore IDE1006

    public ModulatedTransformerCrossBlock(long channels, long ctxChannels, long numHeads, double mlpRatio, bool shareMod,
        bool qkRmsNorm, bool qkRmsNormCross, bool qkvBias, ScalarType dtype, Device? device)
        : base(nameof(ModulatedTransformerCrossBlock))
    {
        Channels = channels;
        ShareMod = shareMod;
        norm1 = new LayerNorm32(channels, elementwiseAffine: false, eps: 1e-6, dtype, device);
        norm2 = new LayerNorm32(channels, elementwiseAffine: true, eps: 1e-6, dtype, device);
        norm3 = new LayerNorm32(channels, elementwiseAffine: false, eps: 1e-6, dtype, device);
        self_attn = new MultiHeadAttention(channels, numHeads, null, cross: false, qkvBias, qkRmsNorm, dtype, device);
        cross_attn = new MultiHeadAttention(channels, numHeads, ctxChannels, cross: true, qkvBias, qkRmsNormCross, dtype, device);
        mlp = new FeedForwardNet(channels, mlpRatio, dtype, device);
        if (!shareMod)
            adaLN_modulation = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(channels, 6 * channels, device: device, dtype: dtype)));
        RegisterComponents();
    }

    public long Channels { get; }
    public bool ShareMod { get; }

    /// <summary>Sets the attention backend of both attention layers.</summary>
    public AttentionBackend Backend
    {
        get => self_attn.Backend;
        set { self_attn.Backend = value; cross_attn.Backend = value; }
    }

    /// <summary>Every Linear of the block (TRELLIS's fp16 torso conversion converts exactly these).</summary>
    internal IEnumerable<Linear> Linears()
    {
        foreach (var l in self_attn.Linears()) yield return l;
        foreach (var l in cross_attn.Linears()) yield return l;
        foreach (var l in mlp.Linears()) yield return l;
        if (adaLN_modulation is not null) foreach (var l in adaLN_modulation.children().OfType<Linear>()) yield return l;
    }

    /// <summary>x <c>[B, L, C]</c>; mod <c>[B, C]</c> (t embedding) or <c>[B, 6C]</c> with share_mod; context <c>[B, Lc, Cctx]</c>.</summary>
    public override Tensor forward(Tensor x, Tensor mod, Tensor context)
    {
        using var scope = torch.NewDisposeScope();
        var m = ShareMod ? mod : adaLN_modulation!.forward(mod);
        var c = m.chunk(6, 1);
        Tensor shiftMsa = c[0].unsqueeze(1), scaleMsa = c[1].unsqueeze(1), gateMsa = c[2].unsqueeze(1);
        Tensor shiftMlp = c[3].unsqueeze(1), scaleMlp = c[4].unsqueeze(1), gateMlp = c[5].unsqueeze(1);

        var h = AdaLn.Modulate(norm1.forward(x), shiftMsa, scaleMsa);
        h = self_attn.forward(h, null);
        x = AdaLn.GatedAdd(x, h, gateMsa);
        h = norm2.forward(x);
        h = cross_attn.forward(h, context);
        x = x + h;
        h = AdaLn.Modulate(norm3.forward(x), shiftMlp, scaleMlp);
        h = mlp.forward(h);
        x = AdaLn.GatedAdd(x, h, gateMlp);
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>The adaLN elementwise steps shared by the dense and sparse modulated blocks.</summary>
internal static class AdaLn
{
    /// <summary>TRELLIS's modulation <c>h·(1 + scale) + shift</c> (scale, shift broadcast over the tokens).</summary>
    public static Tensor Modulate(Tensor h, Tensor shift, Tensor scale) => h * (1 + scale) + shift;

    /// <summary>The gated residual <c>x + h·gate</c>.</summary>
    public static Tensor GatedAdd(Tensor x, Tensor h, Tensor gate) => x + h * gate;
}
