using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments of TRELLIS's <c>SparseStructureFlowModel</c> (Python keyword names in brackets). Defaults are
/// the Python defaults. The released image model <c>ss_flow_img_dit_L_16l8_fp16</c> is <see cref="ImageLarge"/>.
/// </summary>
public sealed record SparseStructureFlowConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SparseStructureFlowModel";

    /// <summary>Grid resolution R of the latent <c>[B, in, R, R, R]</c> (<c>resolution</c>).</summary>
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
    /// <summary>Position encoding (<c>pe_mode</c>): only "ape" can run (see remarks of <see cref="Validate"/>).</summary>
    public string PeMode { get; init; } = "ape";
    /// <summary>TRELLIS's <c>use_fp16</c> flag (kept for round trips; .NET selects compute precision explicitly).</summary>
    public bool UseFp16 { get; init; }
    /// <summary>TRELLIS's <c>use_checkpoint</c> (gradient checkpointing; kept for round trips, no effect on results).</summary>
    public bool UseCheckpoint { get; init; }
    /// <summary>One model-level adaLN modulation shared by all blocks (<c>share_mod</c>).</summary>
    public bool ShareMod { get; init; }
    /// <summary>RMS-normalise q and k in self-attention (<c>qk_rms_norm</c>).</summary>
    public bool QkRmsNorm { get; init; }
    /// <summary>RMS-normalise q and k in cross-attention (<c>qk_rms_norm_cross</c>).</summary>
    public bool QkRmsNormCross { get; init; }

    /// <summary>The effective number of heads.</summary>
    public long Heads => NumHeads ?? (NumHeadChannels > 0 ? ModelChannels / NumHeadChannels : 0);

    /// <summary>Tokens per sample: (R/p)³.</summary>
    public long Tokens => (Resolution / PatchSize) * (Resolution / PatchSize) * (Resolution / PatchSize);

    /// <summary>The released TRELLIS-image-large stage-1 flow (<c>ckpts/ss_flow_img_dit_L_16l8_fp16.json</c>).</summary>
    public static SparseStructureFlowConfig ImageLarge => new()
    {
        Resolution = 16, InChannels = 8, OutChannels = 8, ModelChannels = 1024, CondChannels = 1024, NumBlocks = 24,
        NumHeads = 16, MlpRatio = 4, PatchSize = 1, PeMode = "ape", QkRmsNorm = true, UseFp16 = true,
    };

    /// <summary>Checks that the network can be built.</summary>
    /// <remarks>
    /// <c>pe_mode = "rope"</c> is rejected: TRELLIS's SparseStructureFlowModel registers no <c>pos_emb</c> in that mode
    /// but adds <c>self.pos_emb</c> unconditionally in <c>forward</c>, so the reference cannot run it, and no released
    /// checkpoint uses it.
    /// </remarks>
    /// <exception cref="ArgumentException">A value is out of range or inconsistent.</exception>
    /// <exception cref="NotSupportedException"><c>pe_mode</c> is "rope".</exception>
    public void Validate()
    {
        var p = new ConfigProblems(ClassName);
        p.Range("resolution", Resolution, 1, TrellisConfigLimits.MaxResolution);
        p.Channels("in_channels", InChannels);
        p.Channels("out_channels", OutChannels);
        p.Channels("model_channels", ModelChannels);
        p.Channels("cond_channels", CondChannels);
        p.Blocks("num_blocks", NumBlocks);
        if (p.Range("patch_size", PatchSize, 1, TrellisConfigLimits.MaxPatch) && Resolution >= 1)
            p.Check(Resolution % PatchSize == 0, $"patch_size {PatchSize} must divide resolution {Resolution}");
        p.Heads(ModelChannels, NumHeads, NumHeadChannels);
        p.MlpRatio(MlpRatio, ModelChannels);
        p.OneOf("pe_mode", PeMode, "ape", "rope");
        p.ThrowIfAny();
        if (PeMode == "rope")
            throw new NotSupportedException($"{ClassName} with pe_mode 'rope' cannot run in TRELLIS itself (no pos_emb is registered, yet forward adds self.pos_emb), and no released checkpoint uses it; use pe_mode 'ape'.");
    }

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SparseStructureFlowConfig FromArgs(JsonObject? args)
    {
        var a = new ConfigArgs(ClassName, args);
        var cfg = new SparseStructureFlowConfig
        {
            Resolution = a.Int("resolution"),
            InChannels = a.Int("in_channels"),
            ModelChannels = a.Int("model_channels"),
            CondChannels = a.Int("cond_channels"),
            OutChannels = a.Int("out_channels"),
            NumBlocks = a.Int("num_blocks"),
            NumHeads = a.IntOrNull("num_heads", null),
            NumHeadChannels = a.IntOrNull("num_head_channels", 64) ?? 64,
            MlpRatio = a.Double("mlp_ratio", 4),
            PatchSize = a.Int("patch_size", 2),
            PeMode = a.String("pe_mode", "ape"),
            UseFp16 = a.Bool("use_fp16", false),
            UseCheckpoint = a.Bool("use_checkpoint", false),
            ShareMod = a.Bool("share_mod", false),
            QkRmsNorm = a.Bool("qk_rms_norm", false),
            QkRmsNormCross = a.Bool("qk_rms_norm_cross", false),
        };
        a.Finish();
        return cfg;
    }

    /// <summary>The <c>args</c> object (every argument, Python keyword names).</summary>
    public JsonObject ToArgs()
    {
        var o = new JsonObject
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
        return o;
    }

    internal static JsonNode JsonNumber(double v) =>
        v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);
}
