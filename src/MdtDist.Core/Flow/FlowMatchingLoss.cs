using MdtDist.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>The terms of a <see cref="FlowMatchingLoss"/> evaluation.</summary>
/// <param name="Loss">Mean squared error over all elements (TRELLIS's <c>terms["mse"]</c> = <c>terms["loss"]</c>), differentiable.</param>
/// <param name="PerSample">Mean squared error of each sample, <c>[B]</c> (detached), for time-binned logging.</param>
/// <param name="T">The times used, <c>[B]</c>.</param>
/// <param name="XT">The noisy latent x_t.</param>
/// <param name="Prediction">The model's velocity.</param>
/// <param name="Target">The target velocity (1 − σ)·ε − x0.</param>
public sealed record FlowMatchingTerms(Tensor Loss, Tensor PerSample, Tensor T, Tensor XT, Tensor Prediction, Tensor Target);

/// <summary>
/// The plain rectified-flow training objective of TRELLIS's teacher: E‖v(x_t, t | c) − ((1 − σ)ε − x0)‖², with
/// x_t from <see cref="RectifiedFlowPath"/>. Works for dense and sparse latents alike.
/// </summary>
public sealed class FlowMatchingLoss
{
    /// <summary>Creates the objective on <paramref name="path"/> (TRELLIS's path when null).</summary>
    public FlowMatchingLoss(RectifiedFlowPath? path = null) => Path = path ?? RectifiedFlowPath.Trellis;

    /// <summary>The flow path.</summary>
    public RectifiedFlowPath Path { get; }

    /// <summary>Evaluates the loss.</summary>
    /// <param name="model">The model being trained.</param>
    /// <param name="x0">Clean data.</param>
    /// <param name="condition">Passed to the model.</param>
    /// <param name="t">Per-sample times <c>[B]</c> in [0, 1] (draw them with a time sampler).</param>
    /// <param name="noise">ε, same shape as x0; drawn with <paramref name="generator"/> when null.</param>
    /// <param name="generator">Random source for ε.</param>
    /// <exception cref="ArgumentException">t has the wrong size or values outside [0, 1]; noise or the model output has the wrong shape.</exception>
    public FlowMatchingTerms Compute(IFlowModel model, Latent x0, Tensor? condition, Tensor t, Tensor? noise = null, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentChecks.PerSampleTime(t, x0.BatchSize);
        using (var bad = (t.lt(0) | t.gt(1) | t.isnan()).any())
            if (bad.item<bool>()) throw new ArgumentException("t has values outside [0, 1].", nameof(t));
        if (noise is not null && !noise.shape.SequenceEqual(x0.Data.shape))
            throw new ArgumentException($"noise has shape [{string.Join(", ", noise.shape)}], expected [{string.Join(", ", x0.Data.shape)}].", nameof(noise));
        noise ??= torch.randn(x0.Data.shape, dtype: x0.Data.dtype, device: x0.Data.device, generator: generator);
        var tt = t.to(x0.Data.dtype, x0.Data.device);
        var xt = Path.Interpolate(x0, noise, tt);
        var v = model.Velocity(x0.With(xt), tt, condition);
        if (!v.shape.SequenceEqual(xt.shape))
            throw new ArgumentException($"the model returned shape [{string.Join(", ", v.shape)}] for a latent of shape [{string.Join(", ", xt.shape)}].", nameof(model));
        var target = Path.TargetVelocity(x0.Data, noise);
        var sq = (v - target).square();
        var loss = sq.mean();
        var perSample = x0.Layout.MeanPerSample(sq.detach());
        return new FlowMatchingTerms(loss, perSample, tt, xt, v, target);
    }
}
