using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// What TRELLIS's structure VAE encoder and decoder share: the config, the TRELLIS class name and the precision API
/// (input / output layers in <see cref="DType"/>, the residual torso in <see cref="TorsoDType"/>).
/// </summary>
public abstract class SparseStructureVaeNetwork : nn.Module<Tensor, Tensor>, ITrellisModel
{
    private ScalarType? _torso;

    /// <summary>Checks the arguments every structure VAE network takes (config, dtype) before its layers are built.</summary>
    private protected SparseStructureVaeNetwork(string name, SparseStructureVaeConfig config, ScalarType dtype) : base(name)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
    }

    private protected abstract SparseStructureVaeConfig VaeConfig { get; }

    private protected abstract Conv3d InputLayer { get; }

    /// <summary>The residual blocks TRELLIS's <c>convert_to_fp16</c> converts.</summary>
    private protected abstract IEnumerable<nn.Module> Torso { get; }

    /// <inheritdoc />
    public string TrellisClassName => VaeConfig.TrellisClassName;

    /// <inheritdoc />
    public JsonObject ToConfigArgs() => VaeConfig.ToArgs();

    /// <summary>The dtype of the input / output layers (the dtype inputs are expected in).</summary>
    public ScalarType DType => InputLayer.weight.dtype;

    /// <summary>The dtype the residual torso (blocks, middle block) computes in.</summary>
    public ScalarType TorsoDType => _torso ?? DType;

    /// <summary>Runs the torso (blocks and middle block) in <paramref name="dtype"/>, as TRELLIS's <c>convert_to_fp16</c> (convolutions converted; norms compute in at least float32).</summary>
    public void SetTorsoDType(ScalarType dtype)
    {
        Precision.RequireFloat(dtype, nameof(dtype));
        foreach (var m in Torso.SelectMany(TorsoLayers.ConvAndLinear)) m.to(dtype);
        _torso = dtype;
    }

    /// <summary>TRELLIS's <c>blocks</c>: per stage <c>num_res_blocks</c> residual blocks, then (except after the last stage) the resampling block <paramref name="resample"/> to the next stage's width.</summary>
    private protected static ModuleList<nn.Module<Tensor, Tensor>> Stages(SparseStructureVaeConfig config, Func<long, long, nn.Module<Tensor, Tensor>> resample, ScalarType dtype, Device? device)
    {
        var ch = config.Channels;
        var blocks = new ModuleList<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < ch.Count; i++)
        {
            for (long j = 0; j < config.NumResBlocks; j++) blocks.Add(new ResBlock3d(ch[i], ch[i], config.NormType, dtype, device));
            if (i < ch.Count - 1) blocks.Add(resample(ch[i], ch[i + 1]));
        }
        return blocks;
    }

    /// <summary>TRELLIS's <c>middle_block</c>: <c>num_res_blocks_middle</c> residual blocks of width <paramref name="channels"/>.</summary>
    private protected static Sequential MiddleBlock(SparseStructureVaeConfig config, long channels, ScalarType dtype, Device? device) =>
        nn.Sequential(Enumerable.Range(0, (int)config.NumResBlocksMiddle)
            .Select(i => (i.ToString(System.Globalization.CultureInfo.InvariantCulture), (nn.Module<Tensor, Tensor>)new ResBlock3d(channels, channels, config.NormType, dtype, device))));

    /// <summary>TRELLIS's <c>out_layer</c>: norm, SiLU, 3×3×3 convolution from the last stage's width to <paramref name="outChannels"/>.</summary>
    private protected static Sequential OutLayer(SparseStructureVaeConfig config, long outChannels, ScalarType dtype, Device? device) =>
        nn.Sequential(
            ("0", VaeNorm.Create(config.NormType, config.Channels[^1], dtype, device)),
            ("1", nn.SiLU()),
            ("2", Init.Conv3d(config.Channels[^1], outChannels, 3, padding: 1, dtype: dtype, device: device)));

    /// <summary>Checks that <paramref name="x"/> is <c>[B, channels, X, Y, Z]</c> in <see cref="DType"/>.</summary>
    /// <exception cref="ArgumentException">Wrong rank, channel count or dtype.</exception>
    private protected void RequireInput(Tensor x, long channels, string name)
    {
        if (x.dim() != 5 || x.shape[1] != channels)
            throw new ArgumentException($"{name}: expected shape [B, {channels}, X, Y, Z], found {Precision.Shape(x.shape)}.", name);
        if (x.dtype != DType)
            throw new ArgumentException($"{name}: dtype {x.dtype} differs from the model's parameter dtype {DType}.", name);
    }
}

/// <summary>
/// TRELLIS's structure VAE encoder (<c>trellis.models.sparse_structure_vae.SparseStructureEncoder</c>): a binary occupancy
/// grid <c>[B, in, 64, 64, 64]</c> → latent mean / log-variance <c>[B, latent, 16, 16, 16]</c>. Parameter names as TRELLIS's
/// state dict (<c>input_layer</c>, <c>blocks.N</c>, <c>middle_block.N</c>, <c>out_layer.0/2</c>).
/// </summary>
public sealed class SparseStructureEncoder : SparseStructureVaeNetwork
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Conv3d input_layer;
    private readonly ModuleList<nn.Module<Tensor, Tensor>> blocks;
    private readonly Sequential middle_block;
    private readonly Sequential out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the encoder.</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <exception cref="ArgumentException">Invalid config or dtype.</exception>
    public SparseStructureEncoder(SparseStructureEncoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(SparseStructureEncoderConfig.ClassName, config, dtype)
    {
        Config = config;
        input_layer = Init.Conv3d(config.InChannels, config.Channels[0], 3, padding: 1, dtype: dtype, device: device);
        blocks = Stages(config, (from, to) => new DownsampleBlock3d(from, to, "conv", dtype, device), dtype, device);
        middle_block = MiddleBlock(config, config.Channels[^1], dtype, device);
        out_layer = OutLayer(config, config.LatentChannels * 2, dtype, device);
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SparseStructureEncoderConfig Config { get; }

    private protected override SparseStructureVaeConfig VaeConfig => Config;

    private protected override Conv3d InputLayer => input_layer;

    private protected override IEnumerable<nn.Module> Torso => new nn.Module[] { blocks, middle_block };

    /// <summary>The latent z (= mean, TRELLIS's default <c>sample_posterior=False</c>) of <paramref name="x"/> <c>[B, in, R, R, R]</c>.</summary>
    public override Tensor forward(Tensor x)
    {
        var (z, mean, logvar) = Encode(x);
        mean.Dispose(); logvar.Dispose();
        return z;
    }

    /// <summary>
    /// Encodes <paramref name="x"/> <c>[B, in, R, R, R]</c> (R divisible by 2^(stages−1)): returns z, mean and log-variance,
    /// each <c>[B, latent, R', R', R']</c>. With <paramref name="samplePosterior"/>, z = mean + exp(logvar/2)·ε; otherwise z = mean.
    /// </summary>
    /// <exception cref="ArgumentException">Wrong rank, channel count or dtype.</exception>
    public (Tensor Z, Tensor Mean, Tensor LogVar) Encode(Tensor x, bool samplePosterior = false, Generator? generator = null)
    {
        RequireInput(x, Config.InChannels, nameof(x));
        using var scope = torch.NewDisposeScope();
        var h = input_layer.forward(x);
        h = h.As(TorsoDType);
        foreach (var b in blocks) h = b.forward(h);
        h = middle_block.forward(h);
        h = h.As(x.dtype);
        h = out_layer.forward(h);
        var parts = h.chunk(2, 1);
        var mean = parts[0].contiguous();
        var logvar = parts[1].contiguous();
        Tensor z;
        if (samplePosterior)
        {
            var std = torch.exp(0.5 * logvar);
            z = mean + std * torch.randn(std.shape, dtype: std.dtype, device: std.device, generator: generator);
        }
        else z = mean.alias();
        return (z.MoveToOuterDisposeScope(), mean.MoveToOuterDisposeScope(), logvar.MoveToOuterDisposeScope());
    }
}

/// <summary>
/// TRELLIS's structure VAE decoder (<c>trellis.models.sparse_structure_vae.SparseStructureDecoder</c>): latent
/// <c>[B, latent, 16, 16, 16]</c> → occupancy logits <c>[B, out, 64, 64, 64]</c> (3D-conv residual blocks with pixel-shuffle
/// upsampling). <see cref="DecodeOccupancy"/> gives the occupied voxel coordinates as TRELLIS's pipeline does.
/// </summary>
public sealed class SparseStructureDecoder : SparseStructureVaeNetwork
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Conv3d input_layer;
    private readonly Sequential middle_block;
    private readonly ModuleList<nn.Module<Tensor, Tensor>> blocks;
    private readonly Sequential out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the decoder.</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <exception cref="ArgumentException">Invalid config or dtype.</exception>
    public SparseStructureDecoder(SparseStructureDecoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(SparseStructureDecoderConfig.ClassName, config, dtype)
    {
        Config = config;
        input_layer = Init.Conv3d(config.LatentChannels, config.Channels[0], 3, padding: 1, dtype: dtype, device: device);
        middle_block = MiddleBlock(config, config.Channels[0], dtype, device);
        blocks = Stages(config, (from, to) => new UpsampleBlock3d(from, to, "conv", dtype, device), dtype, device);
        out_layer = OutLayer(config, config.OutChannels, dtype, device);
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SparseStructureDecoderConfig Config { get; }

    private protected override SparseStructureVaeConfig VaeConfig => Config;

    private protected override Conv3d InputLayer => input_layer;

    private protected override IEnumerable<nn.Module> Torso => new nn.Module[] { middle_block, blocks };

    /// <summary>Occupancy logits <c>[B, out, R·2^(stages−1), ...]</c> of the latent <paramref name="z"/> <c>[B, latent, R, R, R]</c>.</summary>
    /// <exception cref="ArgumentException">Wrong rank, channel count or dtype.</exception>
    public override Tensor forward(Tensor z)
    {
        RequireInput(z, Config.LatentChannels, nameof(z));
        using var scope = torch.NewDisposeScope();
        var h = input_layer.forward(z);
        h = h.As(TorsoDType);
        h = middle_block.forward(h);
        foreach (var b in blocks) h = b.forward(h);
        h = h.As(z.dtype);
        h = out_layer.forward(h);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decodes <paramref name="z"/> (without autograd) and returns the occupied voxels as TRELLIS's pipeline does:
    /// <c>argwhere(logits &gt; 0)[:, [0, 2, 3, 4]]</c>, int32 rows (sample, x, y, z), row-major order.
    /// </summary>
    public Tensor DecodeOccupancy(Tensor z)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var logits = forward(z);
        return OccupiedCoords(logits).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The voxels whose logit is &gt; 0 in a logit grid <c>[B, C, X, Y, Z]</c>: int32 <c>[N, 4]</c> rows (sample, x, y, z)
    /// in row-major order (channel dropped, as TRELLIS's <c>[:, [0, 2, 3, 4]]</c>; with C &gt; 1 a voxel appears once per positive channel).
    /// </summary>
    /// <exception cref="ArgumentException">The logits are not 5-D.</exception>
    internal static Tensor OccupiedCoords(Tensor logits)
    {
        if (logits.dim() != 5) throw new ArgumentException($"logits: expected [B, C, X, Y, Z], found {Precision.Shape(logits.shape)}.", nameof(logits));
        using var scope = torch.NewDisposeScope();
        var idx = torch.argwhere(logits > 0);
        var cols = torch.tensor(new long[] { 0, 2, 3, 4 }, device: idx.device);
        return idx.index_select(1, cols).to(ScalarType.Int32).MoveToOuterDisposeScope();
    }
}
