namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// The architecture of a DINOv2 vision transformer with register tokens as torch.hub builds it
/// (<c>dinov2.hub.backbones.dinov2_vit?14_reg</c>): patch size 14, LayerScale, an MLP feed-forward with the exact GELU,
/// LayerNorm eps 1e-6, <c>interpolate_antialias=True</c> and <c>interpolate_offset=0</c>.
/// </summary>
/// <param name="EmbedDim">Token width E (1024 for ViT-L).</param>
/// <param name="Depth">Number of transformer blocks (24 for ViT-L).</param>
/// <param name="NumHeads">Attention heads (16 for ViT-L); E must be a multiple.</param>
/// <param name="ImageSize">The image side the stored position embedding was made for (518: a 37 × 37 patch grid).</param>
/// <param name="PatchSize">Patch side in pixels (14).</param>
/// <param name="NumRegisterTokens">Register tokens inserted after the CLS token (4).</param>
/// <param name="MlpRatio">MLP hidden width / E (4).</param>
public sealed record Dinov2Config(long EmbedDim, long Depth, long NumHeads, long ImageSize = 518, long PatchSize = 14,
    long NumRegisterTokens = 4, double MlpRatio = 4.0)
{
    /// <summary>The torch.hub entry TRELLIS names in <c>pipeline.json</c> (<c>image_cond_model</c>).</summary>
    public const string VitL14RegName = "dinov2_vitl14_reg";

    /// <summary>The file torch.hub downloads for <see cref="VitL14RegName"/>.</summary>
    public const string VitL14RegCheckpointFile = "dinov2_vitl14_reg4_pretrain.pth";

    /// <summary>DINOv2 ViT-L/14 with 4 registers (TRELLIS's image condition model): E 1024, 24 blocks, 16 heads, 518².</summary>
    public static Dinov2Config VitL14Reg { get; } = new(1024, 24, 16);

    /// <summary>
    /// The architecture of a torch.hub register entry: <c>dinov2_vits14_reg</c> (384, 12, 6), <c>dinov2_vitb14_reg</c>
    /// (768, 12, 12) or <c>dinov2_vitl14_reg</c> (1024, 24, 16).
    /// </summary>
    /// <exception cref="NotSupportedException">Another name (the giant model's SwiGLU MLP and the register-free models'
    /// position-embedding offset are not implemented).</exception>
    public static Dinov2Config FromHubName(string name, long imageSize = 518) => name switch
    {
        "dinov2_vits14_reg" => new(384, 12, 6, imageSize),
        "dinov2_vitb14_reg" => new(768, 12, 12, imageSize),
        VitL14RegName => new(1024, 24, 16, imageSize),
        _ => throw new NotSupportedException(
            $"image condition model '{name}' is not supported; supported: dinov2_vits14_reg, dinov2_vitb14_reg, {VitL14RegName}."),
    };

    /// <summary>Patch rows/columns of the stored position embedding (ImageSize / PatchSize).</summary>
    public long GridSize => ImageSize / PatchSize;

    /// <summary>MLP hidden width (E · MlpRatio).</summary>
    public long MlpHidden => (long)(EmbedDim * MlpRatio);

    /// <summary>Tokens the model returns for a native-size image: 1 CLS + registers + GridSize².</summary>
    public long NativeTokenCount => 1 + NumRegisterTokens + GridSize * GridSize;

    /// <summary>Throws <see cref="ArgumentException"/> naming each invalid field with its value.</summary>
    public void Validate()
    {
        var errors = new List<string>();
        if (EmbedDim < 1) errors.Add($"EmbedDim must be positive, got {EmbedDim}");
        if (Depth < 1) errors.Add($"Depth must be positive, got {Depth}");
        if (NumHeads < 1 || EmbedDim % Math.Max(NumHeads, 1) != 0) errors.Add($"NumHeads ({NumHeads}) must be a positive divisor of EmbedDim ({EmbedDim})");
        if (PatchSize < 1) errors.Add($"PatchSize must be positive, got {PatchSize}");
        if (ImageSize < PatchSize || (PatchSize > 0 && ImageSize % PatchSize != 0)) errors.Add($"ImageSize ({ImageSize}) must be a positive multiple of PatchSize ({PatchSize})");
        if (NumRegisterTokens < 0) errors.Add($"NumRegisterTokens must be >= 0, got {NumRegisterTokens}");
        if (!(MlpRatio > 0)) errors.Add($"MlpRatio must be positive, got {MlpRatio}");
        if (errors.Count > 0) throw new ArgumentException("invalid DINOv2 config: " + string.Join("; ", errors) + ".");
    }
}
