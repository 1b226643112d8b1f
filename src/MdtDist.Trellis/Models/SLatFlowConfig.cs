using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments of TRELLIS's <c>SLatFlowModel</c> / <c>ElasticSLatFlowModel</c> (Python keyword names in
/// brackets, as in <c>ckpts/slat_flow_*.json</c>). Defaults are the Python defaults.
/// </summary>
public sealed record SLatFlowConfig : TrellisFlowConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SLatFlowModel";

    /// <summary>The TRELLIS class name of the elastic-memory variant (same network and forward).</summary>
    public const string ElasticClassName = "ElasticSLatFlowModel";

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <summary>Residual blocks per IO stage (<c>num_io_res_blocks</c>, default 2).</summary>
    public long NumIoResBlocks { get; init; } = 2;
    /// <summary>Channels of each IO stage, or null for none (<c>io_block_channels</c>).</summary>
    public IReadOnlyList<long>? IoBlockChannels { get; init; }
    /// <summary>Concatenate the IO-stage skips into the output blocks (<c>use_skip_connection</c>, default true).</summary>
    public bool UseSkipConnection { get; init; } = true;
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
        var c = ReadCommon(a, new SLatFlowConfig
        {
            NumIoResBlocks = a.Int("num_io_res_blocks", 2),
            IoBlockChannels = a.IntListOrNull("io_block_channels"),
            UseSkipConnection = a.Bool("use_skip_connection", true),
            Resolution = 0, InChannels = 0, ModelChannels = 0, CondChannels = 0, OutChannels = 0, NumBlocks = 0,
        });
        a.Finish();
        return c;
    }

    /// <inheritdoc />
    public override JsonObject ToArgs()
    {
        var o = base.ToArgs();
        o["num_io_res_blocks"] = NumIoResBlocks;
        o["io_block_channels"] = IoBlockChannels is { } io ? new JsonArray(io.Select(c => (JsonNode?)c).ToArray()) : null;
        o["use_skip_connection"] = UseSkipConnection;
        return o;
    }

    /// <summary>Checks the arguments as TRELLIS's constructor does, and rejects the combinations TRELLIS cannot run.</summary>
    /// <exception cref="ArgumentException">Every value out of range, inconsistent or unsupported (all listed).</exception>
    public void Validate()
    {
        var p = ValidateCommon();
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
