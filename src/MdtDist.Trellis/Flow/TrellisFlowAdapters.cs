using MdtDist.Core;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Flow;

/// <summary>
/// Core's <see cref="IFlowNetwork"/> over a TRELLIS flow network, with one contract for both stages:
/// <list type="bullet">
/// <item><c>t</c> is <c>[B]</c>, one time in [0, 1] per sample; the network receives 1000·t computed in float64, as
/// TRELLIS's samplers and trainers do (<c>fl32(1000·t)</c>, not <c>1000·fl32(t)</c>).</item>
/// <item>The condition is <c>[B or 1, L, cond_channels]</c>; a batch-1 condition is shared by every sample (TRELLIS
/// repeats it); null is rejected (the networks are conditional).</item>
/// <item>The latent and the condition are cast to the network's <see cref="ITrellisModel.DType"/> (a condition already in
/// the network's 16-bit torso dtype is passed as it is); the velocity comes back in
/// the latent's dtype and device.</item>
/// </list>
/// </summary>
/// <typeparam name="TNetwork">The wrapped network.</typeparam>
public abstract class TrellisFlowAdapter<TNetwork> : IFlowNetwork where TNetwork : nn.Module, ITrellisModel
{
    private protected TrellisFlowAdapter(TNetwork network, long inChannels, long outChannels)
    {
        Network = network ?? throw new ArgumentNullException(nameof(network));
        if (outChannels != inChannels)
            throw new ArgumentException($"network: a velocity model needs out_channels == in_channels, got out_channels {outChannels} and in_channels {inChannels}.", nameof(network));
    }

    /// <summary>The wrapped network.</summary>
    public TNetwork Network { get; }

    /// <inheritdoc />
    public nn.Module Module => Network;

    private protected abstract long CondChannels { get; }

    /// <summary>Checks the latent's layout and shape.</summary>
    private protected abstract void CheckLatent(Latent x);

    /// <summary>The network's output for <paramref name="x"/> (in the network dtype), t in TRELLIS units.</summary>
    private protected abstract Tensor Evaluate(Latent x, Tensor timesteps, Tensor cond);

    /// <inheritdoc />
    /// <exception cref="ArgumentException">A latent of the wrong layout or shape, t not <c>[B]</c>, or a missing or mis-shaped condition.</exception>
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        ArgumentNullException.ThrowIfNull(x);
        CheckLatent(x);
        long b = x.BatchSize;
        ArgumentChecks.PerSampleTime(t, b);
        var cond = ArgumentChecks.Condition(condition, b, CondChannels, Network.TrellisClassName);
        FlowInputChecks.UnitTime(t, nameof(t));
        FlowInputChecks.Finite(cond, nameof(condition));
        if (x.Layout is not DenseLayout) FlowInputChecks.Finite(x.Data, "x (sparse features)");
        using var scope = torch.NewDisposeScope();
        var dtype = Network.DType;
        var device = x.Data.device;
        var timesteps = t.to(ScalarType.Float64, device) * TrellisInfo.TimeScale;
        var v = Evaluate(x.With(x.Data.to(dtype)), timesteps, cond.to(ConditionDType(cond.dtype), device));
        return v.to(x.Data.dtype, x.Data.device).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The network's <see cref="ITrellisModel.DType"/>, except for a condition already in a 16-bit torso dtype narrower than
    /// it: that one is passed as it is (casting it up and letting the network cast it back down gives the same values), so
    /// that the network's own cast to the torso is a no-op and the very same condition tensor reaches the cross-attention
    /// layers on every step of a run, which their K/V cache recognises. (A condition in the network's dtype is not cast
    /// here; the network casts it to its torso once per condition itself.)
    /// </summary>
    private ScalarType ConditionDType(ScalarType given)
    {
        var torso = Network.TorsoDType;
        bool narrowerTorso = torso is ScalarType.BFloat16 or ScalarType.Float16 && Network.DType is ScalarType.Float32 or ScalarType.Float64;
        return given == torso && narrowerTorso ? torso : Network.DType;
    }
}

/// <summary>
/// The stage-1 adapter: TRELLIS's <see cref="SparseStructureFlowModel"/> as an <see cref="IFlowNetwork"/> over a dense
/// latent (<see cref="DenseLayout"/>) <c>[B, in_channels, R, R, R]</c> (contract: <see cref="TrellisFlowAdapter{TNetwork}"/>).
/// </summary>
public sealed class SparseStructureFlowAdapter : TrellisFlowAdapter<SparseStructureFlowModel>
{
    /// <summary>Wraps <paramref name="network"/>.</summary>
    /// <exception cref="ArgumentException">The network's out_channels differ from its in_channels (its output is then no velocity of the latent).</exception>
    public SparseStructureFlowAdapter(SparseStructureFlowModel network)
        : base(network, network?.Config.InChannels ?? 0, network?.Config.OutChannels ?? 0)
    {
    }

    private protected override long CondChannels => Network.Config.CondChannels;

    /// <summary>The latent shape for <paramref name="batchSize"/> samples: <c>[B, in_channels, R, R, R]</c>.</summary>
    public long[] LatentShape(long batchSize)
    {
        var c = Network.Config;
        return new[] { batchSize, c.InChannels, c.Resolution, c.Resolution, c.Resolution };
    }

    private protected override void CheckLatent(Latent x)
    {
        if (x.Layout is not DenseLayout)
            throw new ArgumentException($"x: {nameof(SparseStructureFlowModel)} needs a dense latent (DenseLayout), got {x.Layout.GetType().Name}.", nameof(x));
        var expected = LatentShape(x.BatchSize);
        if (!x.Data.shape.SequenceEqual(expected))
            throw new ArgumentException($"x: expected a latent of shape {ArgumentChecks.Shape(expected)}, found {ArgumentChecks.Shape(x.Data.shape)}.", nameof(x));
    }

    private protected override Tensor Evaluate(Latent x, Tensor timesteps, Tensor cond)
    {
        var device = Network.Device;
        return Network.forward(x.Data.to(device), timesteps.to(device), cond.to(device));
    }
}

/// <summary>
/// The stage-2 adapter: TRELLIS's <see cref="SLatFlowModel"/> as an <see cref="IFlowNetwork"/> over a sparse latent
/// (<see cref="SparseLatentLayout"/>, whose coordinates rebuild the <see cref="SparseTensor"/>) (contract:
/// <see cref="TrellisFlowAdapter{TNetwork}"/>).
/// </summary>
public sealed class SLatFlowAdapter : TrellisFlowAdapter<SLatFlowModel>
{
    /// <summary>Wraps <paramref name="network"/>.</summary>
    /// <exception cref="ArgumentException">The network's out_channels differ from its in_channels.</exception>
    public SLatFlowAdapter(SLatFlowModel network)
        : base(network, network?.Config.InChannels ?? 0, network?.Config.OutChannels ?? 0)
    {
    }

    private protected override long CondChannels => Network.Config.CondChannels;

    private protected override void CheckLatent(Latent x)
    {
        if (x.Layout is not SparseLatentLayout)
            throw new ArgumentException($"x: the SLat flow needs a latent with a {nameof(SparseLatentLayout)}, found {x.Layout.GetType().Name}.", nameof(x));
    }

    private protected override Tensor Evaluate(Latent x, Tensor timesteps, Tensor cond) =>
        Network.forward(((SparseLatentLayout)x.Layout).ToSparseTensor(x.Data), timesteps, cond).Feats;
}
