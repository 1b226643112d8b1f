using MdtDist.Core.Flow;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Exposes a <see cref="SLatFlowModel"/> as a Core <see cref="IFlowModel"/>: the latent must carry a
/// <see cref="SparseLatentLayout"/> (its coordinates rebuild the <see cref="SparseTensor"/>), t ∈ [0, 1] is scaled by
/// 1000 as TRELLIS's samplers and trainers do, and a condition with batch 1 is repeated to the batch.
/// </summary>
public sealed class SLatFlowAdapter : MdtDist.Core.Training.IFlowNetwork
{
    /// <summary>Wraps <paramref name="model"/>.</summary>
    public SLatFlowAdapter(SLatFlowModel model) => Model = model ?? throw new ArgumentNullException(nameof(model));

    /// <summary>The wrapped network.</summary>
    public SLatFlowModel Model { get; }

    /// <inheritdoc />
    public nn.Module Module => Model;

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The latent is not sparse, t is not <c>[B]</c>, or the condition is missing or
    /// not <c>[B or 1, L, cond_channels]</c>, t is outside [0, 1], or t, the condition or the features hold NaN/±inf.</exception>
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        if (x.Layout is not SparseLatentLayout layout)
            throw new ArgumentException($"the SLat flow needs a latent with a {nameof(SparseLatentLayout)}, found {x.Layout.GetType().Name}.", nameof(x));
        if (condition is null)
            throw new ArgumentException("the SLat flow model is conditional: condition tokens [B or 1, L, cond_channels] are required.", nameof(condition));
        long b = x.BatchSize;
        int width = Model.Config.CondChannels;
        if (condition.dim() != 3 || (condition.shape[0] != b && condition.shape[0] != 1))
            throw new ArgumentException($"condition must be [B={b} or 1, L, {width}], found [{string.Join(", ", condition.shape)}].", nameof(condition));
        if (condition.shape[2] != width)
            throw new ArgumentException($"condition tokens have width {condition.shape[2]}, but the model's cond_channels is {width} (shape [{string.Join(", ", condition.shape)}]).", nameof(condition));
        if (t.dim() > 1 || (t.dim() == 1 && t.shape[0] != b && t.shape[0] != 1))
            throw new ArgumentException($"t must be [B={b}] (or a scalar), found [{string.Join(", ", t.shape)}].", nameof(t));

        FlowInputChecks.UnitTime(t, nameof(t));
        FlowInputChecks.Finite(condition, nameof(condition));
        FlowInputChecks.Finite(x.Data, "x (sparse features)");

        using var scope = torch.NewDisposeScope();
        var tt = (t.dim() == 0 || t.shape[0] != b ? t.reshape(1).expand(b) : t).to(x.Data.device) * TrellisInfo.TimeScale;
        var cond = condition.shape[0] == b ? condition : condition.expand(b, -1, -1);
        var st = layout.ToSparseTensor(x.Data);
        return Model.Forward(st, tt, cond).Feats.MoveToOuterDisposeScope();
    }
}
