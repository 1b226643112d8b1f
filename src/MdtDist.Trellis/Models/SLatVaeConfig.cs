using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Representations;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments shared by TRELLIS's structured-latent VAE networks (<c>SparseTransformerBase</c>:
/// <c>SLatEncoder</c>, <c>SLatGaussianDecoder</c>, <c>SLatMeshDecoder</c>). Python keyword names in brackets; defaults are
/// the Python defaults.
/// </summary>
public abstract record SLatVaeConfig
{
    /// <summary>Grid resolution; coordinates lie in <c>[0, resolution)</c> (<c>resolution</c>, 64 in TRELLIS).</summary>
    public required long Resolution { get; init; }
    /// <summary>Transformer width C (<c>model_channels</c>).</summary>
    public required long ModelChannels { get; init; }
    /// <summary>Latent channels (<c>latent_channels</c>, 8 in TRELLIS).</summary>
    public required long LatentChannels { get; init; }
    /// <summary>Transformer blocks (<c>num_blocks</c>).</summary>
    public required long NumBlocks { get; init; }
    /// <summary>Attention heads (<c>num_heads</c>); null means <c>model_channels // num_head_channels</c>.</summary>
    public long? NumHeads { get; init; }
    /// <summary>Channels per head when <see cref="NumHeads"/> is null (<c>num_head_channels</c>, default 64).</summary>
    public long NumHeadChannels { get; init; } = 64;
    /// <summary>MLP hidden ratio (<c>mlp_ratio</c>, default 4).</summary>
    public double MlpRatio { get; init; } = 4;
    /// <summary>"swin" (shifted windows, default) or "full" (<c>attn_mode</c>).</summary>
    public string AttnMode { get; init; } = "swin";
    /// <summary>Swin window size (<c>window_size</c>, default 8).</summary>
    public long WindowSize { get; init; } = 8;
    /// <summary>Position embedding (<c>pe_mode</c>; "ape" only).</summary>
    public string PeMode { get; init; } = "ape";
    /// <summary>TRELLIS's <c>use_fp16</c> flag (kept for round trips; precision is chosen with the model's dtype API).</summary>
    public bool UseFp16 { get; init; }
    /// <summary>Gradient checkpointing of every transformer block in training (<c>use_checkpoint</c>; never changes results).</summary>
    public bool UseCheckpoint { get; init; }
    /// <summary>RMS-normalise q and k (<c>qk_rms_norm</c>).</summary>
    public bool QkRmsNorm { get; init; }

    /// <summary>The TRELLIS class name.</summary>
    public abstract string TrellisClassName { get; }

    /// <summary>Number of heads actually used.</summary>
    public long Heads => NumHeads ?? (NumHeadChannels > 0 ? ModelChannels / NumHeadChannels : 0);

    /// <summary>Reads the shared arguments into <paramref name="config"/>.</summary>
    private protected static T ReadCommon<T>(ConfigArgs a, T config) where T : SLatVaeConfig => config with
    {
        Resolution = a.Int("resolution"),
        ModelChannels = a.Int("model_channels"),
        LatentChannels = a.Int("latent_channels"),
        NumBlocks = a.Int("num_blocks"),
        NumHeads = a.IntOrNull("num_heads", null),
        NumHeadChannels = a.Int("num_head_channels", 64),
        MlpRatio = a.Double("mlp_ratio", 4),
        AttnMode = a.String("attn_mode", "swin"),
        WindowSize = a.Int("window_size", 8),
        PeMode = a.String("pe_mode", "ape"),
        UseFp16 = a.Bool("use_fp16", false),
        UseCheckpoint = a.Bool("use_checkpoint", false),
        QkRmsNorm = a.Bool("qk_rms_norm", false),
    };

    /// <summary>Writes the shared arguments.</summary>
    private protected JsonObject WriteCommon(JsonObject o)
    {
        o["resolution"] = Resolution;
        o["model_channels"] = ModelChannels;
        o["latent_channels"] = LatentChannels;
        o["num_blocks"] = NumBlocks;
        o["num_heads"] = NumHeads;
        o["num_head_channels"] = NumHeadChannels;
        o["mlp_ratio"] = TrellisFlowConfig.JsonNumber(MlpRatio);
        o["attn_mode"] = AttnMode;
        o["window_size"] = WindowSize;
        o["pe_mode"] = PeMode;
        o["use_fp16"] = UseFp16;
        o["use_checkpoint"] = UseCheckpoint;
        o["qk_rms_norm"] = QkRmsNorm;
        return o;
    }

    /// <summary>Checks the shared arguments.</summary>
    private protected ConfigProblems ValidateCommon()
    {
        var p = new ConfigProblems(TrellisClassName);
        p.Range("resolution", Resolution, 1, TrellisConfigLimits.MaxResolution);
        p.Channels("model_channels", ModelChannels);
        p.Channels("latent_channels", LatentChannels);
        p.Blocks("num_blocks", NumBlocks);
        p.Heads(ModelChannels, NumHeads, NumHeadChannels);
        p.MlpRatio(MlpRatio, ModelChannels);
        if (AttnMode is "serialized" or "shift_window" or "shift_sequence" or "shift_order")
            p.Check(false, $"attn_mode '{AttnMode}' (serialized attention) is not supported: it needs TRELLIS's vox2seq CUDA extension and no released config uses it");
        else
            p.OneOf("attn_mode", AttnMode, "swin", "full");
        if (AttnMode == "swin") p.Range("window_size", WindowSize, 1, TrellisConfigLimits.MaxPatch);
        p.Check(PeMode == "ape", $"pe_mode '{PeMode}' is not supported (only 'ape'; no released TRELLIS config uses 'rope')");
        return p;
    }

    /// <summary>Throws one <see cref="ArgumentException"/> listing every value out of range or inconsistent.</summary>
    public abstract void Validate();

    /// <summary>The <c>args</c> object (every argument, Python keyword names).</summary>
    public abstract JsonObject ToArgs();
}

/// <summary>Constructor arguments of TRELLIS's <c>SLatEncoder</c> (checkpoint <c>slat_enc_swin8_B_64l8_fp16</c>).</summary>
public sealed record SLatEncoderConfig : SLatVaeConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SLatEncoder";

    /// <summary>Input feature channels (<c>in_channels</c>, 1024 DINOv2 features in TRELLIS).</summary>
    public required long InChannels { get; init; }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SLatEncoderConfig FromArgs(JsonObject? args)
    {
        var a = new ConfigArgs(ClassName, args);
        var c = ReadCommon(a, new SLatEncoderConfig { InChannels = a.Int("in_channels"), Resolution = 0, ModelChannels = 0, LatentChannels = 0, NumBlocks = 0 });
        a.Finish();
        return c;
    }

    /// <inheritdoc />
    public override JsonObject ToArgs() => WriteCommon(new JsonObject { ["in_channels"] = InChannels });

    /// <inheritdoc />
    public override void Validate()
    {
        var p = ValidateCommon();
        p.Channels("in_channels", InChannels);
        p.ThrowIfAny();
    }
}

/// <summary>Constructor arguments of TRELLIS's <c>SLatGaussianDecoder</c> (checkpoint <c>slat_dec_gs_swin8_B_64l8gs32_fp16</c>).</summary>
public sealed record SLatGaussianDecoderConfig : SLatVaeConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SLatGaussianDecoder";

    /// <summary>How the output becomes Gaussians (<c>representation_config</c>).</summary>
    public required GaussianRepresentationConfig Representation { get; init; }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <summary>The released decoder <c>slat_dec_gs_swin8_B_64l8gs32_fp16</c> of TRELLIS-image-large (its checkpoint's args).</summary>
    public static SLatGaussianDecoderConfig Released => FromArgs(JsonNode.Parse("""
        {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4,
         "attn_mode": "swin", "window_size": 8, "use_fp16": true,
         "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
           "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
           "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}}
        """)!.AsObject());

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SLatGaussianDecoderConfig FromArgs(JsonObject? args)
    {
        var a = new ConfigArgs(ClassName, args);
        var rep = a.Object("representation_config", required: true, ignoreUnknown: true);
        var c = ReadCommon(a, new SLatGaussianDecoderConfig
        {
            Representation = rep is null ? GaussianRepresentationConfig.Trellis : GaussianRepresentationConfig.Read(rep),
            Resolution = 0, ModelChannels = 0, LatentChannels = 0, NumBlocks = 0,
        });
        a.Finish();
        return c;
    }

    /// <inheritdoc />
    public override JsonObject ToArgs() => WriteCommon(new JsonObject { ["representation_config"] = Representation.ToJson() });

    /// <inheritdoc />
    public override void Validate()
    {
        var p = ValidateCommon();
        if (Representation is null) p.Check(false, "representation_config is required");
        else Representation.Validate(p);
        p.ThrowIfAny();
    }
}

/// <summary>Constructor arguments of TRELLIS's <c>SLatMeshDecoder</c> (checkpoint <c>slat_dec_mesh_swin8_B_64l8m256c_fp16</c>).</summary>
public sealed record SLatMeshDecoderConfig : SLatVaeConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SLatMeshDecoder";

    /// <summary>Per-vertex colours and normal maps in the output (<c>representation_config.use_color</c>, default false).</summary>
    public bool UseColor { get; init; }

    /// <summary>GroupNorm groups of the subdivision blocks (TRELLIS fixes 32; not a config argument; tests shrink it).</summary>
    internal long SubdivideNumGroups { get; init; } = 32;

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <summary>The released decoder <c>slat_dec_mesh_swin8_B_64l8m256c_fp16</c> of TRELLIS-image-large (its checkpoint's args).</summary>
    public static SLatMeshDecoderConfig Released => FromArgs(JsonNode.Parse("""
        {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4,
         "attn_mode": "swin", "window_size": 8, "use_fp16": true, "representation_config": {"use_color": true}}
        """)!.AsObject());

    /// <summary>
    /// Reads the <c>args</c> object of a checkpoint config. <c>representation_config</c> is required (only its
    /// <c>use_color</c> is used); <c>mesh_extractor</c> may only be "fc" (FlexiCubes, TRELLIS's released decoder).
    /// </summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SLatMeshDecoderConfig FromArgs(JsonObject? args)
    {
        var a = new ConfigArgs(ClassName, args);
        var rep = a.Object("representation_config", required: true, ignoreUnknown: true);
        var extractor = a.String("mesh_extractor", "fc");
        var c = ReadCommon(a, new SLatMeshDecoderConfig
        {
            UseColor = rep?.Bool("use_color", false) ?? false,
            Resolution = 0, ModelChannels = 0, LatentChannels = 0, NumBlocks = 0,
        });
        a.Finish();
        if (extractor != "fc")
            throw new ArgumentException($"invalid {ClassName} config: mesh_extractor '{extractor}' is not supported (only 'fc', FlexiCubes, TRELLIS's released decoder).", "args");
        return c;
    }

    /// <inheritdoc />
    public override JsonObject ToArgs() => WriteCommon(new JsonObject { ["representation_config"] = new JsonObject { ["use_color"] = UseColor } });

    /// <inheritdoc />
    public override void Validate()
    {
        var p = ValidateCommon();
        long c = ModelChannels, g = SubdivideNumGroups;
        p.Check(g >= 1 && c % 8 == 0 && (c / 4) % g == 0 && (c / 8) % g == 0,
            $"model_channels {c} must be divisible by 8, and model_channels/4 and /8 by the subdivide blocks' num_groups {g}");
        p.ThrowIfAny();
    }
}
