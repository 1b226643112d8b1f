using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>The outputs of <see cref="SLatEncoder.Encode"/>.</summary>
/// <param name="Z">The latent on the input sites (<c>mean</c>, or a posterior sample).</param>
/// <param name="Mean">Posterior mean, <c>[N, latent_channels]</c>.</param>
/// <param name="LogVar">Posterior log-variance, <c>[N, latent_channels]</c>.</param>
public sealed record SLatEncoderOutput(SparseTensor Z, Tensor Mean, Tensor LogVar);

/// <summary>
/// TRELLIS's structured-latent VAE encoder (<c>SLatEncoder</c>, checkpoint <c>slat_enc_swin8_B_64l8_fp16</c>):
/// a <see cref="SparseTransformerBase{TResult}"/> (swin attention), then <c>F.layer_norm</c> (eps 1e-5, no affine) and
/// <c>out_layer = Linear(C, 2·latent_channels)</c> split into mean and log-variance (mean first).
/// Rows keep the input order.
/// </summary>
public class SLatEncoder : SparseTransformerBase<SLatEncoderOutput>
{
#pragma warning disable IDE1006
    private readonly Linear out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the encoder.</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default; the meta device builds shapes only).</param>
    /// <exception cref="ArgumentException">Invalid config (every problem listed) or dtype.</exception>
#pragma warning disable RS0022 // unsealed for TRELLIS's ElasticSLatEncoder subclass; the base's members stay private protected
    public SLatEncoder(SLatEncoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
#pragma warning restore RS0022
        : base(config ?? throw new ArgumentNullException(nameof(config)), config.InChannels, dtype, device)
    {
        Config = config;
        out_layer = nn.Linear(config.ModelChannels, 2 * config.LatentChannels, true, device, dtype);
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SLatEncoderConfig Config { get; }

    private protected override string Role => "encoder";

    /// <summary>The posterior of <paramref name="x"/> with <c>z = mean</c> (TRELLIS's dataset tools; see <see cref="Encode"/>).</summary>
    public override SLatEncoderOutput forward(SparseTensor x) => Encode(x);

    /// <summary>Encodes voxel features.</summary>
    /// <param name="x">Features <c>[N, in_channels]</c> on voxels with coordinates in <c>[0, resolution)</c>.</param>
    /// <param name="samplePosterior">Draw <c>z = mean + exp(logvar/2)·ε</c> instead of <c>z = mean</c>. TRELLIS's forward
    /// defaults to true; its dataset tools (and this default) use the mean.</param>
    /// <param name="generator">Random generator for the posterior sample.</param>
    /// <exception cref="ArgumentException">Wrong feature width, or coordinates outside the grid.</exception>
    public SLatEncoderOutput Encode(SparseTensor x, bool samplePosterior = false, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var h = ForwardTrunk(x);
        var f = Precision.LayerNorm(h.Feats.As(x.Dtype), null, null, 1e-5);
        f = out_layer.forward(f.As(out_layer.weight.dtype)).As(x.Dtype);
        var parts = f.chunk(2, -1);
        var mean = parts[0];
        var logvar = parts[1];
        var z = samplePosterior
            ? mean + (0.5 * logvar).exp() * torch.randn(mean.shape, dtype: mean.dtype, device: mean.device, generator: generator)
            : mean;
        mean.MoveToOuterDisposeScope();
        logvar.MoveToOuterDisposeScope();
        if (samplePosterior) z.MoveToOuterDisposeScope();
        return new SLatEncoderOutput(new SparseTensor(z, x.Coordinates), mean, logvar);
    }
}
