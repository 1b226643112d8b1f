using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Conditioning;

/// <summary>The token outputs of <see cref="Dinov2Model.ForwardFeatures"/> (DINOv2's <c>is_training=True</c> dict).</summary>
/// <param name="XPrenorm">All tokens after the last block, before the final norm: <c>[B, 1 + R + P, E]</c>.</param>
/// <param name="XNormClsToken">The model's final norm applied, CLS token: <c>[B, E]</c>.</param>
/// <param name="XNormRegTokens">Final norm, the R register tokens: <c>[B, R, E]</c>.</param>
/// <param name="XNormPatchTokens">Final norm, the P patch tokens (row-major): <c>[B, P, E]</c>.</param>
public sealed record Dinov2Features(Tensor XPrenorm, Tensor XNormClsToken, Tensor XNormRegTokens, Tensor XNormPatchTokens) : IDisposable
{
    /// <inheritdoc />
    public void Dispose()
    {
        XPrenorm.Dispose();
        XNormClsToken.Dispose();
        XNormRegTokens.Dispose();
        XNormPatchTokens.Dispose();
    }
}

/// <summary>
/// DINOv2 ViT with register tokens (<c>dinov2.models.vision_transformer.DinoVisionTransformer</c> as torch.hub builds
/// <c>dinov2_vitl14_reg</c>), with the state-dict names of <c>dinov2_vitl14_reg4_pretrain.pth</c>: <c>cls_token</c>,
/// <c>register_tokens</c>, <c>pos_embed</c>, <c>mask_token</c>, <c>patch_embed.proj.*</c>, <c>blocks.{i}.norm1/attn.qkv/
/// attn.proj/ls1.gamma/norm2/mlp.fc1/mlp.fc2/ls2.gamma</c>, <c>norm.*</c>.
/// <see cref="nn.Module{T,TResult}.forward"/> maps a normalised image batch <c>[B, 3, H, W]</c> (H, W multiples of 14)
/// to TRELLIS's condition tokens: <c>F.layer_norm(x_prenorm)</c> over the width, eps 1e-5, without affine parameters.
/// </summary>
public sealed class Dinov2Model : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Parameter cls_token;
    private readonly Parameter register_tokens;
    private readonly Parameter pos_embed;
    private readonly Parameter mask_token;
    private readonly Dinov2PatchEmbed patch_embed;
    private readonly ModuleList<Dinov2Block> blocks;
    private readonly LayerNorm norm;
#pragma warning restore IDE1006
    private AttentionBackend _backend = AttentionBackend.Auto;

    /// <summary>Builds the network with placeholder weights (zero tokens and embeddings, default Linear init; load a checkpoint: see <see cref="Dinov2Checkpoint"/>).</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="dtype">Parameter dtype (float32 by default; float64 for exact tests; float16 / bfloat16).</param>
    /// <param name="device">Device (CPU by default).</param>
    public Dinov2Model(Dinov2Config config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base("DinoVisionTransformer")
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
        Config = config;
        long e = config.EmbedDim, m = config.GridSize;
        cls_token = new Parameter(torch.zeros(new long[] { 1, 1, e }, dtype: dtype, device: device));
        register_tokens = new Parameter(torch.zeros(new long[] { 1, config.NumRegisterTokens, e }, dtype: dtype, device: device));
        pos_embed = new Parameter(torch.zeros(new long[] { 1, 1 + m * m, e }, dtype: dtype, device: device));
        mask_token = new Parameter(torch.zeros(new long[] { 1, e }, dtype: dtype, device: device));
        patch_embed = new Dinov2PatchEmbed(config.PatchSize, e, dtype, device);
        blocks = new ModuleList<Dinov2Block>();
        for (long i = 0; i < config.Depth; i++) blocks.Add(new Dinov2Block(e, config.NumHeads, config.MlpHidden, dtype, device));
        norm = nn.LayerNorm(e, eps: 1e-6, dtype: dtype, device: device);
        RegisterComponents();
    }

    /// <summary>The architecture.</summary>
    public Dinov2Config Config { get; }

    /// <summary>Parameter dtype (the dtype images are expected in).</summary>
    public ScalarType DType => cls_token.dtype;

    /// <summary>Parameter device.</summary>
    public Device Device => cls_token.device;

    /// <summary>How attention is computed (Auto: fused SDPA except for float64, which uses the exact math).</summary>
    public AttentionBackend AttentionBackend
    {
        get => _backend;
        set
        {
            _backend = value;
            foreach (var b in blocks) b.Backend = value;
        }
    }

    /// <summary>
    /// TRELLIS's condition tokens: <c>F.layer_norm(x_prenorm, [E], eps=1e-5)</c> without affine parameters, all
    /// 1 + R + P tokens. <paramref name="image"/>: <c>[B, 3, H, W]</c>, ImageNet-normalised, H and W multiples of 14.
    /// Returns <c>[B, 1 + R + (H/14)(W/14), E]</c> (1374 × 1024 for ViT-L at 518²).
    /// </summary>
    public override Tensor forward(Tensor image)
    {
        using var scope = torch.NewDisposeScope();
        var x = Tokens(image);
        return Precision.LayerNorm(x, null, null, 1e-5).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// DINOv2's <c>forward_features</c> (the dict of <c>model(image, is_training=True)</c>) for an ImageNet-normalised
    /// <c>[B, 3, H, W]</c> batch.
    /// </summary>
    public Dinov2Features ForwardFeatures(Tensor image)
    {
        using var scope = torch.NewDisposeScope();
        var x = Tokens(image);
        var n = norm.forward(x);
        long r = Config.NumRegisterTokens;
        var result = new Dinov2Features(
            x.MoveToOuterDisposeScope(),
            n.select(1, 0).contiguous().MoveToOuterDisposeScope(),
            n.narrow(1, 1, r).contiguous().MoveToOuterDisposeScope(),
            n.narrow(1, 1 + r, n.shape[1] - 1 - r).contiguous().MoveToOuterDisposeScope());
        return result;
    }

    /// <summary>
    /// The position embedding for an <paramref name="height"/> × <paramref name="width"/> image (<c>interpolate_pos_encoding</c>):
    /// the stored one when the patch grid is the native square grid, otherwise the patch rows resampled to
    /// (H/14, W/14) with antialiased bicubic weights; returns <c>[1, 1 + P, E]</c>.
    /// </summary>
    public Tensor PositionEmbedding(long height, long width)
    {
        long p = Config.PatchSize, m = Config.GridSize;
        long rows = height / p, cols = width / p;
        if (rows * cols == m * m && height == width) return pos_embed.detach().alias();
        using var scope = torch.NewDisposeScope();
        var pe = pos_embed.detach();
        var ct = Precision.AtLeastFloat32(pe.dtype);  // DINOv2 resamples pos_embed.float()
        var patch = Precision.As(pe[0, TensorIndex.Slice(1)], ct).reshape(m, m, -1);
        var resampled = AntialiasResampler.BicubicAntialias(patch, (int)rows, (int)cols).reshape(1, rows * cols, -1);
        var cls = Precision.As(pe[TensorIndex.Colon, TensorIndex.Slice(0, 1)], ct);
        return Precision.As(torch.cat(new[] { cls, resampled }, 1), pe.dtype).MoveToOuterDisposeScope();
    }

    private Tensor Tokens(Tensor image)
    {
        Validate(image);
        long b = image.shape[0];
        var x = patch_embed.forward(image);                       // [B, P, E]
        x = torch.cat(new[] { cls_token.expand(b, -1, -1), x }, 1);
        x = x + PositionEmbedding(image.shape[2], image.shape[3]);
        x = torch.cat(new[] { x.narrow(1, 0, 1), register_tokens.expand(b, -1, -1), x.narrow(1, 1, x.shape[1] - 1) }, 1);
        foreach (var blk in blocks) x = blk.forward(x);
        return x;
    }

    private void Validate(Tensor image)
    {
        long p = Config.PatchSize;
        if (image.dim() != 4 || image.shape[1] != 3 || image.shape[2] < p || image.shape[3] < p || image.shape[2] % p != 0 || image.shape[3] % p != 0)
            throw new ArgumentException($"image: expected shape [B, 3, H, W] with H and W positive multiples of {p}, found {Precision.Shape(image.shape)}.", nameof(image));
        if (image.dtype != DType)
            throw new ArgumentException($"image: dtype {image.dtype} differs from the model's parameter dtype {DType}.", nameof(image));
    }
}

/// <summary>DINOv2's <c>PatchEmbed</c>: a stride-p convolution <c>proj</c> [E, 3, p, p], then tokens row-major.</summary>
internal sealed class Dinov2PatchEmbed : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d proj;
#pragma warning restore IDE1006

    public Dinov2PatchEmbed(long patch, long embedDim, ScalarType dtype, Device? device) : base("PatchEmbed")
    {
        proj = nn.Conv2d(3, embedDim, patch, stride: patch, dtype: dtype, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = proj.forward(x);
        return h.flatten(2).transpose(1, 2).MoveToOuterDisposeScope();
    }
}

/// <summary>DINOv2's <c>LayerScale</c>: y · <c>gamma</c>[E].</summary>
internal sealed class Dinov2LayerScale : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter gamma;
#pragma warning restore IDE1006

    public Dinov2LayerScale(long dim, ScalarType dtype, Device? device) : base("LayerScale")
    {
        gamma = new Parameter(torch.ones(dim, dtype: dtype, device: device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * gamma;
}

/// <summary>DINOv2's <c>Attention</c>: <c>qkv</c> viewed [B, N, 3, H, D], softmax(q·kᵀ/√D)·v, <c>proj</c>.</summary>
internal sealed class Dinov2Attention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear qkv;
    private readonly Linear proj;
#pragma warning restore IDE1006
    private readonly long _heads;

    public Dinov2Attention(long dim, long heads, ScalarType dtype, Device? device) : base("Attention")
    {
        _heads = heads;
        qkv = nn.Linear(dim, dim * 3, hasBias: true, dtype: dtype, device: device);
        proj = nn.Linear(dim, dim, dtype: dtype, device: device);
        RegisterComponents();
    }

    public AttentionBackend Backend { get; set; } = AttentionBackend.Auto;

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], n = x.shape[1];
        var parts = qkv.forward(x).reshape(b, n, 3, _heads, -1).unbind(2);
        var h = DenseAttention.Compute(parts[0], parts[1], parts[2], Backend).reshape(b, n, -1);
        return proj.forward(h).MoveToOuterDisposeScope();
    }
}

/// <summary>DINOv2's <c>Block</c>: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); LayerNorm eps 1e-6.</summary>
internal sealed class Dinov2Block : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly LayerNorm norm1;
    private readonly Dinov2Attention attn;
    private readonly Dinov2LayerScale ls1;
    private readonly LayerNorm norm2;
    private readonly Fc1Fc2Mlp mlp;
    private readonly Dinov2LayerScale ls2;
#pragma warning restore IDE1006

    public Dinov2Block(long dim, long heads, long hidden, ScalarType dtype, Device? device) : base("Block")
    {
        norm1 = nn.LayerNorm(dim, eps: 1e-6, dtype: dtype, device: device);
        attn = new Dinov2Attention(dim, heads, dtype, device);
        ls1 = new Dinov2LayerScale(dim, dtype, device);
        norm2 = nn.LayerNorm(dim, eps: 1e-6, dtype: dtype, device: device);
        mlp = new Fc1Fc2Mlp(dim, hidden, quickGelu: false, dtype, device);
        ls2 = new Dinov2LayerScale(dim, dtype, device);
        RegisterComponents();
    }

    public AttentionBackend Backend
    {
        get => attn.Backend;
        set => attn.Backend = value;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        x = x + ls1.forward(attn.forward(norm1.forward(x)));
        x = x + ls2.forward(mlp.forward(norm2.forward(x)));
        return x.MoveToOuterDisposeScope();
    }
}
