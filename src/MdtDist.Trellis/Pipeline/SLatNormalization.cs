using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>The per-channel normalisation of the structured latent (<c>slat_normalization</c> in <c>pipeline.json</c>).</summary>
/// <param name="Mean">Per-channel mean.</param>
/// <param name="Std">Per-channel standard deviation.</param>
public sealed record SLatNormalization(IReadOnlyList<double> Mean, IReadOnlyList<double> Std)
{
    /// <summary>TRELLIS-image-large's values.</summary>
    public static SLatNormalization TrellisImageLarge { get; } = new(
        new[] { -2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133, -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826 },
        new[] { 2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695, 2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338 });

    /// <summary>The identity normalisation for <paramref name="channels"/> channels.</summary>
    public static SLatNormalization Identity(int channels) => new(new double[channels], Enumerable.Repeat(1.0, channels).ToArray());

    /// <summary>
    /// Normalises a latent: <c>(x − mean) / std</c> per channel, the channels along <paramref name="channelDim"/>
    /// (1 for structured-latent feats <c>[N, C]</c>, 0 for a sparse-structure latent <c>[C, R, R, R]</c>), as TRELLIS's
    /// datasets do with their <c>normalization</c> argument.
    /// </summary>
    /// <exception cref="ArgumentException">The channel count differs or <paramref name="channelDim"/> is not a dimension of <paramref name="x"/>.</exception>
    public Tensor Normalize(Tensor x, long channelDim = 1)
    {
        using var scope = torch.NewDisposeScope();
        var (m, s) = PerChannel(x, channelDim, nameof(x));
        return ((x - m) / s).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Un-normalises a latent: <c>x · std + mean</c> per channel, the channels along <paramref name="channelDim"/>
    /// (TRELLIS's <c>sample_slat</c> on feats <c>[N, C]</c>: channel dimension 1). The inverse of <see cref="Normalize"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The channel count differs or <paramref name="channelDim"/> is not a dimension of <paramref name="x"/>.</exception>
    public Tensor Denormalize(Tensor x, long channelDim = 1)
    {
        using var scope = torch.NewDisposeScope();
        var (m, s) = PerChannel(x, channelDim, nameof(x));
        return (x * s + m).MoveToOuterDisposeScope();
    }

    /// <summary>Mean and std as tensors in <paramref name="x"/>'s dtype and device, shaped to broadcast along <paramref name="channelDim"/>.</summary>
    private (Tensor Mean, Tensor Std) PerChannel(Tensor x, long channelDim, string name)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (channelDim < 0 || channelDim >= x.dim() || x.shape[channelDim] != Mean.Count || Std.Count != Mean.Count)
            throw new ArgumentException($"the normalisation has {Mean.Count} channels, the latent ({name}) has shape [{string.Join(", ", x.shape)}] with channels along dimension {channelDim}.", name);
        var shape = Enumerable.Repeat(1L, (int)x.dim()).ToArray();
        shape[channelDim] = -1;
        return (torch.tensor(Mean.ToArray(), dtype: x.dtype, device: x.device).reshape(shape),
                torch.tensor(Std.ToArray(), dtype: x.dtype, device: x.device).reshape(shape));
    }
}
