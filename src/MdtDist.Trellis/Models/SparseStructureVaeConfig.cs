using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments shared by TRELLIS's <c>SparseStructureEncoder</c> and <c>SparseStructureDecoder</c>
/// (the 3D-conv structure VAE). Python keyword names in brackets; defaults are the Python defaults.
/// </summary>
public abstract record SparseStructureVaeConfig
{
    /// <summary>Latent channels (<c>latent_channels</c>).</summary>
    public required long LatentChannels { get; init; }
    /// <summary>Residual blocks per resolution (<c>num_res_blocks</c>).</summary>
    public required long NumResBlocks { get; init; }
    /// <summary>Channels per resolution stage (<c>channels</c>).</summary>
    public required IReadOnlyList<long> Channels { get; init; }
    /// <summary>Residual blocks in the middle (<c>num_res_blocks_middle</c>, default 2).</summary>
    public long NumResBlocksMiddle { get; init; } = 2;
    /// <summary>"layer" (channel LayerNorm, default) or "group" (GroupNorm, 32 groups) (<c>norm_type</c>).</summary>
    public string NormType { get; init; } = "layer";
    /// <summary>TRELLIS's <c>use_fp16</c> flag (kept for round trips; .NET selects compute precision explicitly).</summary>
    public bool UseFp16 { get; init; }

    /// <summary>The TRELLIS class name.</summary>
    public abstract string TrellisClassName { get; }

    /// <summary>Checks the shared arguments; adds problems to <paramref name="p"/>.</summary>
    private protected void ValidateCommon(ConfigProblems p)
    {
        p.Channels("latent_channels", LatentChannels);
        p.Blocks("num_res_blocks", NumResBlocks);
        p.Blocks("num_res_blocks_middle", NumResBlocksMiddle);
        if (Channels is null || Channels.Count == 0) p.Check(false, "channels must be a non-empty list");
        else if (p.Check(Channels.Count <= TrellisConfigLimits.MaxStages, $"channels may list at most {TrellisConfigLimits.MaxStages} stages, got {Channels.Count}"))
        {
            p.Check(Channels.All(c => c >= 1 && c <= TrellisConfigLimits.MaxChannels),
                $"channels must all be in [1, {TrellisConfigLimits.MaxChannels}], got [{string.Join(", ", Channels)}]");
            if (NormType == "group")
                p.Check(Channels.All(c => c % 32 == 0), $"norm_type 'group' uses 32 groups, so every channel count must be a multiple of 32, got [{string.Join(", ", Channels)}]");
        }
        p.OneOf("norm_type", NormType, "layer", "group");
    }

    /// <summary>The Python name and value of the class's own channel argument (<c>in_channels</c> or <c>out_channels</c>).</summary>
    private protected abstract (string Key, long Value) OwnChannels { get; }

    /// <summary>Throws one <see cref="ArgumentException"/> with every problem.</summary>
    public void Validate()
    {
        var p = new ConfigProblems(TrellisClassName);
        p.Channels(OwnChannels.Key, OwnChannels.Value);
        ValidateCommon(p);
        p.ThrowIfAny();
    }

    /// <summary>The <c>args</c> object (every argument, Python keyword names).</summary>
    public JsonObject ToArgs()
    {
        return new JsonObject
        {
            [OwnChannels.Key] = OwnChannels.Value,
            ["latent_channels"] = LatentChannels,
            ["num_res_blocks"] = NumResBlocks,
            ["channels"] = new JsonArray(Channels.Select(c => (JsonNode)JsonValue.Create(c)).ToArray()),
            ["num_res_blocks_middle"] = NumResBlocksMiddle,
            ["norm_type"] = NormType,
            ["use_fp16"] = UseFp16,
        };
    }

    /// <summary>
    /// Reads the <c>args</c> of TRELLIS class <paramref name="className"/>: the class's own channel argument
    /// <paramref name="ownKey"/> (handed to <paramref name="create"/>) and the shared ones; reports every problem at once.
    /// </summary>
    private protected static T Read<T>(string className, JsonObject? args, string ownKey, Func<long, T> create) where T : SparseStructureVaeConfig
    {
        var a = new ConfigArgs(className, args);
        var c = create(a.Int(ownKey)) with
        {
            LatentChannels = a.Int("latent_channels"),
            NumResBlocks = a.Int("num_res_blocks"),
            Channels = a.IntList("channels"),
            NumResBlocksMiddle = a.Int("num_res_blocks_middle", 2),
            NormType = a.String("norm_type", "layer"),
            UseFp16 = a.Bool("use_fp16", false),
        };
        a.Finish();
        return c;
    }
}

/// <summary>Constructor arguments of TRELLIS's <c>SparseStructureEncoder</c>.</summary>
public sealed record SparseStructureEncoderConfig : SparseStructureVaeConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SparseStructureEncoder";

    /// <summary>Input channels (<c>in_channels</c>; 1 for an occupancy grid).</summary>
    public required long InChannels { get; init; }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    private protected override (string Key, long Value) OwnChannels => ("in_channels", InChannels);

    /// <summary>The released encoder <c>ss_enc_conv3d_16l8_fp16</c>.</summary>
    public static SparseStructureEncoderConfig Released =>
        new() { InChannels = 1, LatentChannels = 8, NumResBlocks = 2, NumResBlocksMiddle = 2, Channels = new long[] { 32, 128, 512 }, UseFp16 = true };

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SparseStructureEncoderConfig FromArgs(JsonObject? args) => Read(ClassName, args, "in_channels",
        inChannels => new SparseStructureEncoderConfig { InChannels = inChannels, LatentChannels = 0, NumResBlocks = 0, Channels = Array.Empty<long>() });
}

/// <summary>Constructor arguments of TRELLIS's <c>SparseStructureDecoder</c>.</summary>
public sealed record SparseStructureDecoderConfig : SparseStructureVaeConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SparseStructureDecoder";

    /// <summary>Output channels (<c>out_channels</c>; 1 occupancy logit).</summary>
    public required long OutChannels { get; init; }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    private protected override (string Key, long Value) OwnChannels => ("out_channels", OutChannels);

    /// <summary>The released decoder <c>ss_dec_conv3d_16l8_fp16</c> (16³×8 latent → 64³ logits).</summary>
    public static SparseStructureDecoderConfig Released =>
        new() { OutChannels = 1, LatentChannels = 8, NumResBlocks = 2, NumResBlocksMiddle = 2, Channels = new long[] { 512, 128, 32 }, UseFp16 = true };

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SparseStructureDecoderConfig FromArgs(JsonObject? args) => Read(ClassName, args, "out_channels",
        outChannels => new SparseStructureDecoderConfig { OutChannels = outChannels, LatentChannels = 0, NumResBlocks = 0, Channels = Array.Empty<long>() });
}
