namespace MdtDist.Trellis.Checkpoints;

/// <summary>
/// What a TRELLIS model config may ask the library to build. A config read from a file is untrusted: every size is
/// range-checked against these limits before anything is built, and the number of tensor elements (parameters and
/// buffers) the network would hold is counted on the meta device, without allocating, and compared with the bound
/// passed to <see cref="TrellisCheckpoint.Build(TrellisModelConfig, TorchSharp.torch.ScalarType, TorchSharp.torch.Device?, long)"/>
/// / <see cref="TrellisCheckpoint.Load(string, TorchSharp.torch.ScalarType, TorchSharp.torch.Device?, bool, long)"/>
/// (<see cref="DefaultMaxElements"/> unless raised). The structural limits are far above every released TRELLIS
/// network (widths ≤ 1024, ≤ 24 blocks, resolution ≤ 64, 32 Gaussians per voxel).
/// </summary>
public static class TrellisConfigLimits
{
    /// <summary>
    /// The default bound on the tensor elements (parameters + persistent buffers) of one network: 4·10⁹, i.e. 16 GB in
    /// float32. The largest released TRELLIS network (the stage-2 flow of TRELLIS-text-xlarge) holds about 1.1·10⁹.
    /// Pass a larger <c>maxElements</c> to <see cref="TrellisCheckpoint.Build(TrellisModelConfig, TorchSharp.torch.ScalarType, TorchSharp.torch.Device?, long)"/>
    /// or <see cref="TrellisCheckpoint.Load(string, TorchSharp.torch.ScalarType, TorchSharp.torch.Device?, bool, long)"/>
    /// for a genuinely larger model.
    /// </summary>
    public const long DefaultMaxElements = 4_000_000_000;

    /// <summary>The largest channel count of any layer (<c>model_channels</c>, <c>in_channels</c>, ...): 2²⁰.</summary>
    internal const long MaxChannels = 1 << 20;

    /// <summary>The most blocks of one kind (<c>num_blocks</c>, <c>num_res_blocks</c>, ...): 1024.</summary>
    internal const long MaxBlocks = 1024;

    /// <summary>The most stages of a channel list (<c>channels</c>, <c>io_block_channels</c>): 16.</summary>
    internal const long MaxStages = 16;

    /// <summary>The largest grid resolution (<c>resolution</c>): 4096.</summary>
    internal const long MaxResolution = 4096;

    /// <summary>The largest <c>mlp_ratio</c>: 64.</summary>
    internal const double MaxMlpRatio = 64;

    /// <summary>The largest patch size / attention window (<c>patch_size</c>, <c>window_size</c>): 4096.</summary>
    internal const long MaxPatch = 4096;

    /// <summary>The most Gaussians per voxel (<c>representation_config.num_gaussians</c>): 65536.</summary>
    internal const long MaxGaussians = 65536;
}
