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

    /// <summary>Un-normalises feats <c>[N, C]</c>: <c>feats · std + mean</c> per channel (TRELLIS's <c>sample_slat</c>).</summary>
    /// <exception cref="ArgumentException">Channel count differs.</exception>
    public Tensor Denormalize(Tensor feats)
    {
        ArgumentNullException.ThrowIfNull(feats);
        if (feats.dim() != 2 || feats.shape[1] != Mean.Count || Std.Count != Mean.Count)
            throw new ArgumentException($"slat_normalization has {Mean.Count} channels, the latent feats have shape [{string.Join(", ", feats.shape)}].", nameof(feats));
        using var scope = torch.NewDisposeScope();
        var m = torch.tensor(Mean.ToArray(), dtype: feats.dtype, device: feats.device);
        var s = torch.tensor(Std.ToArray(), dtype: feats.dtype, device: feats.device);
        return (feats * s + m).MoveToOuterDisposeScope();
    }
}
