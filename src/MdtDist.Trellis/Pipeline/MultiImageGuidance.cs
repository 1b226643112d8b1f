using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>How several views of one object condition a TRELLIS run (<c>TrellisImageTo3DPipeline.run_multi_image</c>).</summary>
public enum MultiImageMode
{
    /// <summary>Step k of each stage is conditioned on view k mod N only (with the stage's usual guidance).</summary>
    Stochastic = 0,

    /// <summary>Every step averages the conditional velocities of all N views, then applies guidance against one zero
    /// condition (where the stage's guidance interval applies).</summary>
    MultiDiffusion = 1,
}

/// <summary>
/// A stage's velocity for N views of one object, as TRELLIS's <c>inject_sampler_multi_image</c> patches its samplers.
/// <see cref="Velocity"/> takes the views' condition tokens <c>[N, L, C]</c> as its condition and uses each view's row
/// repeated to the latent's batch. Stochastic: at the time of grid step k it returns the stage's guided velocity for
/// view k mod N. MultiDiffusion: v = (Σᵢ v(x, t | cᵢ)) / N, and inside the guidance interval
/// (1 + w)·v − w·v(x, t | negative), the negative being zeros for images.
/// </summary>
public sealed class MultiImageGuidance : IFlowModel
{
    private readonly IFlowModel _model;
    private readonly StageSampler _sampler;
    private readonly double[] _grid;
    private readonly Tensor? _negative;

    /// <summary>Creates the multi-view velocity of one stage.</summary>
    /// <param name="model">The stage's unguided flow (e.g. a <c>SparseStructureFlowAdapter</c>).</param>
    /// <param name="sampler">The stage's sampler settings (guidance strength and interval, time grid).</param>
    /// <param name="mode">Stochastic or MultiDiffusion.</param>
    /// <param name="negativeCondition">The negative tokens <c>[1, L, C]</c> (null: zeros, TRELLIS's image convention).</param>
    public MultiImageGuidance(IFlowModel model, StageSampler sampler, MultiImageMode mode, Tensor? negativeCondition = null)
    {
        _negative = negativeCondition;
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _sampler = sampler ?? throw new ArgumentNullException(nameof(sampler));
        if (!Enum.IsDefined(mode)) throw new ArgumentException($"unknown multi-image mode {mode}.", nameof(mode));
        Mode = mode;
        _grid = sampler.Grid();
    }

    /// <summary>The mode.</summary>
    public MultiImageMode Mode { get; }

    /// <summary>The grid step whose start time is <paramref name="t"/> (TRELLIS pops one view index per solver call).</summary>
    internal int StepOf(double t)
    {
        int best = 0;
        for (int k = 1; k < _grid.Length - 1; k++)
            if (Math.Abs(_grid[k] - t) < Math.Abs(_grid[best] - t)) best = k;
        return best;
    }

    /// <inheritdoc />
    /// <param name="x">The latent.</param>
    /// <param name="t">Per-sample times (all equal within a TRELLIS stage).</param>
    /// <param name="condition">The views' tokens <c>[N, L, C]</c>.</param>
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        if (condition is null || condition.dim() != 3 || condition.shape[0] < 1)
            throw new ArgumentException($"multi-image conditioning needs the views' tokens [N, L, C], found {(condition is null ? "null" : "[" + string.Join(", ", condition.shape) + "]")}.", nameof(condition));
        long b = x.Layout.BatchSize;
        long n = condition.shape[0];
        double t0 = t.to(ScalarType.Float64).cpu().data<double>()[0];
        using var scope = torch.NewDisposeScope();
        Tensor View(long i) => condition.narrow(0, i, 1).expand(b, -1, -1);
        if (Mode == MultiImageMode.Stochastic)
        {
            var guided = _sampler.Guide(_model, _negative);   // one per step: free its paired condition now
            try { return guided.Velocity(x, t, View(StepOf(t0) % n)).MoveToOuterDisposeScope(); }
            finally { (guided as IDisposable)?.Dispose(); }
        }
        Tensor? sum = null;
        for (long i = 0; i < n; i++)
        {
            var v = _model.Velocity(x, t, View(i));
            sum = sum is null ? v : sum + v;
        }
        var pred = sum! / n;
        if (_sampler.CfgStrength != 0 && t0 >= _sampler.CfgIntervalStart && t0 <= _sampler.CfgIntervalEnd)
        {
            var neg = _model.Velocity(x, t, _negative is null ? torch.zeros_like(View(0)) : _negative.expand(b, -1, -1));
            pred = ClassifierFreeGuidance.Combine(pred, neg, _sampler.CfgStrength);
        }
        return pred.MoveToOuterDisposeScope();
    }
}
