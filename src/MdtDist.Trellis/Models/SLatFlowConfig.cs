using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments of TRELLIS's <c>SLatFlowModel</c> / <c>ElasticSLatFlowModel</c> (Python keyword names in
/// brackets, as in <c>ckpts/slat_flow_*.json</c>). Defaults are the Python defaults.
/// </summary>
public sealed record SLatFlowConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SLatFlowModel";

    /// <summary>The TRELLIS class name of the elastic-memory variant (same network and forward).</summary>
    public const string ElasticClassName = "ElasticSLatFlowModel";

    /// <summary>Grid resolution of the input sites (<c>resolution</c>, 64 in TRELLIS).</summary>
    public required long Resolution { get; init; }
    /// <summary>Latent channels in (<c>in_channels</c>).</summary>
    public required long InChannels { get; init; }
    /// <summary>Transformer width C (<c>model_channels</c>).</summary>
    public required long ModelChannels { get; init; }
    /// <summary>Condition token width (<c>cond_channels</c>, 1024 for DINOv2 ViT-L).</summary>
    public required long CondChannels { get; init; }
    /// <summary>Latent channels out (<c>out_channels</c>).</summary>
    public required long OutChannels { get; init; }
    /// <summary>Transformer blocks (<c>num_blocks</c>).</summary>
    public required long NumBlocks { get; init; }
    /// <summary>Attention heads (<c>num_heads</c>); null means <c>model_channels // num_head_channels</c>.</summary>
    public long? NumHeads { get; init; }
    /// <summary>Channels per head when <see cref="NumHeads"/> is null (<c>num_head_channels</c>, default 64).</summary>
    public long NumHeadChannels { get; init; } = 64;
    /// <summary>MLP hidden ratio (<c>mlp_ratio</c>, default 4).</summary>
    public double MlpRatio { get; init; } = 4;
    /// <summary>Down-sampling factor of the IO blocks, 2^len(io_block_channels) (<c>patch_size</c>, default 2).</summary>
    public long PatchSize { get; init; } = 2;
    /// <summary>Residual blocks per IO stage (<c>num_io_res_blocks</c>, default 2).</summary>
    public long NumIoResBlocks { get; init; } = 2;
    /// <summary>Channels of each IO stage, or null for none (<c>io_block_channels</c>).</summary>
    public IReadOnlyList<long>? IoBlockChannels { get; init; }
    /// <summary>Position embedding (<c>pe_mode</c>; "ape" only).</summary>
    public string PeMode { get; init; } = "ape";
    /// <summary>TRELLIS's <c>use_fp16</c> flag (kept for round trips; precision is chosen with the model's dtype API).</summary>
    public bool UseFp16 { get; init; }
    /// <summary>Gradient checkpointing flag (<c>use_checkpoint</c>; kept for round trips).</summary>
    public bool UseCheckpoint { get; init; }
    /// <summary>Concatenate the IO-stage skips into the output blocks (<c>use_skip_connection</c>, default true).</summary>
    public bool UseSkipConnection { get; init; } = true;
    /// <summary>One model-level adaLN modulation shared by all blocks (<c>share_mod</c>).</summary>
    public bool ShareMod { get; init; }
    /// <summary>RMS-normalise q and k in self-attention (<c>qk_rms_norm</c>).</summary>
    public bool QkRmsNorm { get; init; }
    /// <summary>RMS-normalise q and k in cross-attention (<c>qk_rms_norm_cross</c>; broken in TRELLIS, rejected).</summary>
    public bool QkRmsNormCross { get; init; }

    /// <summary>Number of heads actually used.</summary>
    public long Heads => NumHeads ?? (NumHeadChannels > 0 ? ModelChannels / NumHeadChannels : 0);

    /// <summary>The released TRELLIS-image-large stage-2 flow (<c>ckpts/slat_flow_img_dit_L_64l8p2_fp16.json</c>).</summary>
    public static SLatFlowConfig ImageLarge => new()
    {
        Resolution = 64, InChannels = 8, OutChannels = 8, ModelChannels = 1024, CondChannels = 1024, NumBlocks = 24, NumHeads = 16,
        MlpRatio = 4, PatchSize = 2, NumIoResBlocks = 2, IoBlockChannels = new long[] { 128 }, QkRmsNorm = true, UseFp16 = true,
    };

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SLatFlowConfig FromArgs(JsonObject? args) => FromArgs(args, ClassName);

    internal static SLatFlowConfig FromArgs(JsonObject? args, string className)
    {
        var a = new ConfigArgs(className, args);
        var c = new SLatFlowConfig
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
            NumIoResBlocks = a.Int("num_io_res_blocks", 2),
            IoBlockChannels = a.IntListOrNull("io_block_channels"),
            PeMode = a.String("pe_mode", "ape"),
            UseFp16 = a.Bool("use_fp16", false),
            UseCheckpoint = a.Bool("use_checkpoint", false),
            UseSkipConnection = a.Bool("use_skip_connection", true),
            ShareMod = a.Bool("share_mod", false),
            QkRmsNorm = a.Bool("qk_rms_norm", false),
            QkRmsNormCross = a.Bool("qk_rms_norm_cross", false),
        };
        a.Finish();
        return c;
    }

    /// <summary>The <c>args</c> object (every argument, Python keyword names).</summary>
    public JsonObject ToArgs()
    {
        var o = new JsonObject
        {
            ["resolution"] = Resolution, ["in_channels"] = InChannels, ["model_channels"] = ModelChannels,
            ["cond_channels"] = CondChannels, ["out_channels"] = OutChannels, ["num_blocks"] = NumBlocks,
            ["num_heads"] = NumHeads, ["num_head_channels"] = NumHeadChannels,
            ["mlp_ratio"] = SparseStructureFlowConfig.JsonNumber(MlpRatio), ["patch_size"] = PatchSize,
            ["num_io_res_blocks"] = NumIoResBlocks,
            ["io_block_channels"] = IoBlockChannels is { } io ? new JsonArray(io.Select(c => (JsonNode?)c).ToArray()) : null,
            ["pe_mode"] = PeMode, ["use_fp16"] = UseFp16, ["use_checkpoint"] = UseCheckpoint,
            ["use_skip_connection"] = UseSkipConnection, ["share_mod"] = ShareMod,
            ["qk_rms_norm"] = QkRmsNorm, ["qk_rms_norm_cross"] = QkRmsNormCross,
        };
        return o;
    }

    /// <summary>Checks the arguments as TRELLIS's constructor does, and rejects the combinations TRELLIS cannot run.</summary>
    /// <exception cref="ArgumentException">Every value out of range, inconsistent or unsupported (all listed).</exception>
    public void Validate()
    {
        var p = new ConfigProblems(ClassName);
        p.Range("resolution", Resolution, 1, TrellisConfigLimits.MaxResolution);
        p.Channels("in_channels", InChannels);
        p.Channels("out_channels", OutChannels);
        p.Channels("model_channels", ModelChannels);
        p.Channels("cond_channels", CondChannels);
        p.Blocks("num_blocks", NumBlocks);
        p.Heads(ModelChannels, NumHeads, NumHeadChannels);
        p.MlpRatio(MlpRatio, ModelChannels);
        p.Check(PeMode == "ape", $"pe_mode '{PeMode}' is not supported (only 'ape'; no released TRELLIS config uses 'rope')");
        p.Check(!QkRmsNormCross, "qk_rms_norm_cross=true is broken in TRELLIS's sparse cross-attention with a dense context and no released config uses it; it is not supported");
        if (IoBlockChannels is { } io)
        {
            if (p.Check(PatchSize >= 1 && PatchSize <= TrellisConfigLimits.MaxPatch && (PatchSize & (PatchSize - 1)) == 0,
                    $"patch_size must be a power of 2 in [1, {TrellisConfigLimits.MaxPatch}], got {PatchSize}"))
            {
                int stages = System.Numerics.BitOperations.Log2((ulong)PatchSize);
                p.Check(stages == io.Count, $"log2(patch_size) = {stages} must equal the number of io_block_channels ({io.Count})");
            }
            p.Range("num_io_res_blocks", NumIoResBlocks, 1, TrellisConfigLimits.MaxBlocks);
            p.Check(io.Count <= TrellisConfigLimits.MaxStages && io.All(ch => ch >= 1 && ch <= TrellisConfigLimits.MaxChannels),
                $"io_block_channels must list at most {TrellisConfigLimits.MaxStages} values in [1, {TrellisConfigLimits.MaxChannels}], got [{string.Join(", ", io)}]");
            p.Check(!ShareMod, "share_mod=true with io_block_channels crashes in TRELLIS (the IO blocks receive the 6C modulation instead of t_emb); it is not supported");
        }
        p.ThrowIfAny();
    }
}
