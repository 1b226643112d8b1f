using MdtDist.Trellis.Modules;
using System.Text.Json;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>The outputs of <see cref="SLatEncoder.Forward"/>.</summary>
/// <param name="Z">The latent on the input sites (<c>mean</c>, or a posterior sample).</param>
/// <param name="Mean">Posterior mean, <c>[N, latent_channels]</c>.</param>
/// <param name="LogVar">Posterior log-variance, <c>[N, latent_channels]</c>.</param>
public sealed record SLatEncoderOutput(SparseTensor Z, Tensor Mean, Tensor LogVar);

/// <summary>
/// TRELLIS's structured-latent VAE encoder (<c>SLatEncoder</c>, checkpoint <c>slat_enc_swin8_B_64l8_fp16</c>):
/// a <see cref="SparseTransformerBase"/> (swin attention), then <c>F.layer_norm</c> (eps 1e-5, no affine) and
/// <c>out_layer = Linear(C, 2·latent_channels)</c> split into mean and log-variance (mean first).
/// Rows keep the input order.
/// </summary>
public sealed class SLatEncoder : SparseTransformerBase
{
#pragma warning disable IDE1006
    private Linear out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the encoder with TRELLIS's constructor arguments.</summary>
    /// <exception cref="ArgumentException">Unsupported or inconsistent arguments.</exception>
    public SLatEncoder(int resolution, int inChannels, int modelChannels, int latentChannels, int numBlocks,
        int? numHeads = null, int numHeadChannels = 64, double mlpRatio = 4, string attnMode = "swin", int windowSize = 8,
        string peMode = "ape", bool qkRmsNorm = false, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(SLatEncoder), resolution, inChannels, modelChannels, numBlocks, numHeads, numHeadChannels, mlpRatio, attnMode, windowSize, peMode, qkRmsNorm, dtype, device)
    {
        if (latentChannels < 1) throw new ArgumentException($"latent_channels must be >= 1, found {latentChannels}.", nameof(latentChannels));
        LatentChannels = latentChannels;
        out_layer = nn.Linear(modelChannels, 2 * latentChannels, true, device, dtype);
        RegisterComponents();
    }

    /// <summary>
    /// Builds the encoder from a TRELLIS config: the <c>args</c> object of <c>ckpts/NAME.json</c>, or the whole
    /// <c>{"name": "SLatEncoder", "args": {...}}</c>. <c>use_fp16</c> and <c>use_checkpoint</c> are accepted; precision
    /// is chosen by <paramref name="dtype"/> (and <see cref="SparseTransformerBase.ConvertTorso"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Missing, unknown or unsupported arguments.</exception>
    public static SLatEncoder FromConfig(JsonElement args, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var a = new ModelArgs(args, nameof(SLatEncoder), "ElasticSLatEncoder");
        var enc = new SLatEncoder(
            a.Int("resolution"), a.Int("in_channels"), a.Int("model_channels"), a.Int("latent_channels"), a.Int("num_blocks"),
            a.IntOrNull("num_heads", null), a.Int("num_head_channels", 64), a.Double("mlp_ratio", 4), a.String("attn_mode", "swin"),
            a.Int("window_size", 8), a.String("pe_mode", "ape"), a.Bool("qk_rms_norm", false), dtype, device);
        a.Accept("use_fp16", "use_checkpoint");
        a.RejectUnknown();
        return enc;
    }

    private protected override string Role => "encoder";

    /// <summary>Latent channels (8 in TRELLIS).</summary>
    public int LatentChannels { get; }

    /// <summary>Encodes voxel features.</summary>
    /// <param name="x">Features <c>[N, in_channels]</c> on voxels with coordinates in <c>[0, resolution)</c>.</param>
    /// <param name="samplePosterior">Draw <c>z = mean + exp(logvar/2)·ε</c> instead of <c>z = mean</c>. TRELLIS's forward
    /// defaults to true; its dataset tools (and this default) use the mean.</param>
    /// <param name="generator">Random generator for the posterior sample.</param>
    /// <exception cref="ArgumentException">Wrong feature width, or coordinates outside the grid.</exception>
    public SLatEncoderOutput Forward(SparseTensor x, bool samplePosterior = false, Generator? generator = null)
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
