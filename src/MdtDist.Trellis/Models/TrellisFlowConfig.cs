using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments shared by TRELLIS's two flow transformers (<see cref="SparseStructureFlowConfig"/>,
/// <see cref="SLatFlowConfig"/>); Python keyword names in brackets, defaults are the Python defaults.
/// </summary>
public abstract record TrellisFlowConfig
{
    /// <summary>Grid resolution R (<c>resolution</c>): the dense latent is <c>[B, in, R, R, R]</c>, sparse coordinates lie in <c>[0, R)</c>.</summary>
    public required long Resolution { get; init; }
    /// <summary>Latent channels in (<c>in_channels</c>).</summary>
    public required long InChannels { get; init; }
    /// <summary>Transformer width C (<c>model_channels</c>).</summary>
    public required long ModelChannels { get; init; }
    /// <summary>Width of the condition tokens (<c>cond_channels</c>).</summary>
    public required long CondChannels { get; init; }
    /// <summary>Latent channels out (<c>out_channels</c>).</summary>
    public required long OutChannels { get; init; }
    /// <summary>Number of transformer blocks (<c>num_blocks</c>).</summary>
    public required long NumBlocks { get; init; }
    /// <summary>Attention heads (<c>num_heads</c>); null means <c>model_channels // num_head_channels</c>.</summary>
    public long? NumHeads { get; init; }
    /// <summary>Channels per head when <see cref="NumHeads"/> is null (<c>num_head_channels</c>, default 64).</summary>
    public long NumHeadChannels { get; init; } = 64;
    /// <summary>MLP hidden width ratio (<c>mlp_ratio</c>, default 4); the hidden width is <c>int(C·mlp_ratio)</c>.</summary>
    public double MlpRatio { get; init; } = 4;
    /// <summary>Patch size p (<c>patch_size</c>, default 2).</summary>
    public long PatchSize { get; init; } = 2;
    /// <summary>Position encoding (<c>pe_mode</c>): only "ape" can run.</summary>
    public string PeMode { get; init; } = "ape";
    /// <summary>TRELLIS's <c>use_fp16</c> flag (kept for round trips; .NET selects compute precision explicitly).</summary>
    public bool UseFp16 { get; init; }
    /// <summary>TRELLIS's <c>use_checkpoint</c>: gradient checkpointing of every transformer block in training (honoured by the
    /// structured-latent flows; never changes results, only memory and time).</summary>
    public bool UseCheckpoint { get; init; }
    /// <summary>One model-level adaLN modulation shared by all blocks (<c>share_mod</c>).</summary>
    public bool ShareMod { get; init; }
    /// <summary>RMS-normalise q and k in self-attention (<c>qk_rms_norm</c>).</summary>
    public bool QkRmsNorm { get; init; }
    /// <summary>RMS-normalise q and k in cross-attention (<c>qk_rms_norm_cross</c>).</summary>
    public bool QkRmsNormCross { get; init; }

    /// <summary>The effective number of heads.</summary>
    public long Heads => NumHeads ?? (NumHeadChannels > 0 ? ModelChannels / NumHeadChannels : 0);


    /// <summary>The TRELLIS class name.</summary>
    public abstract string TrellisClassName { get; }

    /// <summary>Reads the shared arguments into <paramref name="config"/>.</summary>
    private protected static T ReadCommon<T>(ConfigArgs a, T config) where T : TrellisFlowConfig => config with
    {
        Resolution = a.Int("resolution"),
        InChannels = a.Int("in_channels"),
        ModelChannels = a.Int("model_channels"),
        CondChannels = a.Int("cond_channels"),
        OutChannels = a.Int("out_channels"),
        NumBlocks = a.Int("num_blocks"),
        NumHeads = a.IntOrNull("num_heads", null),
        NumHeadChannels = a.Int("num_head_channels", 64),
        MlpRatio = a.Double("mlp_ratio", 4),
        PatchSize = a.Int("patch_size", 2),
        PeMode = a.String("pe_mode", "ape"),
        UseFp16 = a.Bool("use_fp16", false),
        UseCheckpoint = a.Bool("use_checkpoint", false),
        ShareMod = a.Bool("share_mod", false),
        QkRmsNorm = a.Bool("qk_rms_norm", false),
        QkRmsNormCross = a.Bool("qk_rms_norm_cross", false),
    };

    /// <summary>The <c>args</c> object (every argument, Python keyword names).</summary>
    public virtual JsonObject ToArgs() => new()
    {
        ["resolution"] = Resolution,
        ["in_channels"] = InChannels,
        ["model_channels"] = ModelChannels,
        ["cond_channels"] = CondChannels,
        ["out_channels"] = OutChannels,
        ["num_blocks"] = NumBlocks,
        ["num_heads"] = NumHeads,
        ["num_head_channels"] = NumHeadChannels,
        ["mlp_ratio"] = JsonNumber(MlpRatio),
        ["patch_size"] = PatchSize,
        ["pe_mode"] = PeMode,
        ["use_fp16"] = UseFp16,
        ["use_checkpoint"] = UseCheckpoint,
        ["share_mod"] = ShareMod,
        ["qk_rms_norm"] = QkRmsNorm,
        ["qk_rms_norm_cross"] = QkRmsNormCross,
    };

    /// <summary>Checks the shared sizes; the derived record adds its own checks and throws.</summary>
    private protected ConfigProblems ValidateCommon()
    {
        var p = new ConfigProblems(TrellisClassName);
        p.Range("resolution", Resolution, 1, TrellisConfigLimits.MaxResolution);
        p.Channels("in_channels", InChannels);
        p.Channels("out_channels", OutChannels);
        p.Channels("model_channels", ModelChannels);
        p.Channels("cond_channels", CondChannels);
        p.Blocks("num_blocks", NumBlocks);
        p.Heads(ModelChannels, NumHeads, NumHeadChannels);
        p.MlpRatio(MlpRatio, ModelChannels);
        return p;
    }

    /// <summary>A JSON number as Python writes it (an integer when the value is integral).</summary>
    internal static JsonNode JsonNumber(double v) =>
        v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);
}
