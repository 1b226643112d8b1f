using MdtDist.Core.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Flow;

/// <summary>
/// Core's <see cref="IFlowModel"/> over TRELLIS's stage-1 <see cref="SparseStructureFlowModel"/>: takes t ∈ [0, 1] per
/// sample and passes 1000·t (computed in float64) to the network, as TRELLIS's samplers do. The latent must be dense
/// (<see cref="DenseLayout"/>) <c>[B, in_channels, R, R, R]</c>; the condition <c>[B or 1, L, cond_channels]</c>, a batch-1
/// condition being repeated to B as TRELLIS does. Inputs are cast to the network's dtype and device and the velocity is
/// returned in the latent's dtype and device.
/// </summary>
public sealed class TrellisFlowModel : MdtDist.Core.Training.IFlowNetwork
{
    /// <summary>Wraps <paramref name="network"/>.</summary>
    /// <exception cref="ArgumentException">The network's out_channels differ from its in_channels (its output is then no velocity of the latent).</exception>
    public TrellisFlowModel(SparseStructureFlowModel network)
    {
        Network = network ?? throw new ArgumentNullException(nameof(network));
        if (network.Config.OutChannels != network.Config.InChannels)
            throw new ArgumentException($"network: a velocity model needs out_channels == in_channels, got out_channels {network.Config.OutChannels} and in_channels {network.Config.InChannels}.", nameof(network));
    }

    /// <summary>The wrapped network.</summary>
    public SparseStructureFlowModel Network { get; }

    /// <inheritdoc />
    public nn.Module Module => Network;

    /// <summary>The latent shape for <paramref name="batchSize"/> samples: <c>[B, in_channels, R, R, R]</c>.</summary>
    public long[] LatentShape(long batchSize)
    {
        var c = Network.Config;
        return new[] { batchSize, c.InChannels, c.Resolution, c.Resolution, c.Resolution };
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">A non-dense latent, a latent or condition of the wrong shape, a missing condition, t not <c>[B]</c>,
    /// t outside [0, 1], or NaN/±inf in t or the condition.</exception>
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        var cfg = Network.Config;
        if (x.Layout is not DenseLayout)
            throw new ArgumentException($"x: {nameof(SparseStructureFlowModel)} needs a dense latent (DenseLayout), got {x.Layout.GetType().Name}.", nameof(x));
        var data = x.Data;
        long b = x.BatchSize, r = cfg.Resolution;
        if (data.dim() != 5 || data.shape[1] != cfg.InChannels || data.shape[2] != r || data.shape[3] != r || data.shape[4] != r)
            throw new ArgumentException($"x: expected a latent of shape [{b}, {cfg.InChannels}, {r}, {r}, {r}], found {Precision.Shape(data.shape)}.", nameof(x));
        if (t.dim() != 1 || t.shape[0] != b)
            throw new ArgumentException($"t: expected shape [{b}], found {Precision.Shape(t.shape)}.", nameof(t));
        if (condition is null)
            throw new ArgumentException($"condition: {nameof(SparseStructureFlowModel)} needs condition tokens [B or 1, L, {cfg.CondChannels}], got null.", nameof(condition));
        if (condition.dim() != 3 || condition.shape[2] != cfg.CondChannels || (condition.shape[0] != b && condition.shape[0] != 1))
            throw new ArgumentException($"condition: expected shape [{b} or 1, L, {cfg.CondChannels}], found {Precision.Shape(condition.shape)}.", nameof(condition));

        FlowInputChecks.UnitTime(t, nameof(t));
        FlowInputChecks.Finite(condition, nameof(condition));

        using var scope = torch.NewDisposeScope();
        var dtype = Network.DType;
        var device = Network.Device;
        var xin = data.to(dtype, device);
        var cond = condition.to(dtype, device);
        if (cond.shape[0] == 1 && b > 1) cond = cond.repeat(b, 1, 1);
        var tin = t.to(ScalarType.Float64, device) * TrellisInfo.TimeScale;
        var v = Network.forward(xin, tin, cond);
        return v.to(data.dtype, data.device).MoveToOuterDisposeScope();
    }
}
