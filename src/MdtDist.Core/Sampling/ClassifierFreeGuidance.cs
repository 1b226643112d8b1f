using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Sampling;

/// <summary>
/// Classifier-free guidance as a model wrapper: v = (1 + w)·v(x, t | c) − w·v(x, t | c_neg), applied only to samples
/// whose t lies in the inclusive interval [start, end] (TRELLIS's <c>cfg_interval</c>); outside it the conditional
/// velocity alone is used (one network evaluation). Solvers never need to know about guidance.
/// Note TRELLIS's strength w = 5 corresponds to a diffusers-style guidance scale of 6.
/// </summary>
public sealed class ClassifierFreeGuidance : IFlowModel
{
    private readonly Tensor? _negative;

    /// <summary>Wraps <paramref name="model"/>.</summary>
    /// <param name="model">The conditional model.</param>
    /// <param name="strength">w ≥ 0 (TRELLIS's <c>cfg_strength</c>).</param>
    /// <param name="negativeCondition">The unconditional condition; null means <c>zeros_like(condition)</c> as TRELLIS's image pipeline.</param>
    /// <param name="intervalStart">Lower end of the guidance interval in t ∈ [0, 1].</param>
    /// <param name="intervalEnd">Upper end of the guidance interval.</param>
    /// <exception cref="ArgumentException">Negative or non-finite strength, an interval outside [0, 1] or reversed, or NaN/±inf in the negative condition.</exception>
    public ClassifierFreeGuidance(IFlowModel model, double strength, Tensor? negativeCondition = null, double intervalStart = 0.0, double intervalEnd = 1.0)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        if (!double.IsFinite(strength) || strength < 0) throw new ArgumentException($"guidance strength must be a finite number >= 0, got {strength}.", nameof(strength));
        if (!double.IsFinite(intervalStart) || intervalStart < 0 || intervalStart > 1)
            throw new ArgumentException($"guidance interval start must be in [0, 1], got {intervalStart}.", nameof(intervalStart));
        if (!double.IsFinite(intervalEnd) || intervalEnd < 0 || intervalEnd > 1)
            throw new ArgumentException($"guidance interval end must be in [0, 1], got {intervalEnd}.", nameof(intervalEnd));
        if (intervalEnd < intervalStart)
            throw new ArgumentException($"guidance interval is reversed: [{intervalStart}, {intervalEnd}].", nameof(intervalEnd));
        Strength = strength;
        IntervalStart = intervalStart;
        IntervalEnd = intervalEnd;
        FlowInputChecks.Finite(negativeCondition, nameof(negativeCondition));
        _negative = negativeCondition;
    }

    /// <summary>The wrapped conditional model.</summary>
    public IFlowModel Model { get; }

    /// <summary>Guidance strength w.</summary>
    public double Strength { get; }

    /// <summary>Lower end of the interval where guidance applies.</summary>
    public double IntervalStart { get; }

    /// <summary>Upper end of the interval where guidance applies.</summary>
    public double IntervalEnd { get; }

    /// <summary>The guided velocity (1 + w)·<paramref name="conditional"/> − w·<paramref name="unconditional"/>.</summary>
    public static Tensor Combine(Tensor conditional, Tensor unconditional, double strength) =>
        (1 + strength) * conditional - strength * unconditional;

    /// <summary>True when guidance applies at time <paramref name="t"/>.</summary>
    public bool AppliesAt(double t) => Strength != 0 && t >= IntervalStart && t <= IntervalEnd;

    /// <summary>
    /// Network evaluations this wrapper costs at time <paramref name="t"/>: twice the wrapped model's where guidance
    /// applies (conditional + unconditional), once elsewhere.
    /// </summary>
    public int EvaluationsAt(double t) => (AppliesAt(t) ? 2 : 1) * Model.EvaluationsAt(t);

    /// <inheritdoc />
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        if (condition is null) throw new ArgumentException("classifier-free guidance needs a condition; got null.", nameof(condition));
        var ts = t.to(ScalarType.Float64).cpu().data<double>().ToArray();
        var inside = ts.Select(AppliesAt).ToArray();
        int n = inside.Count(b => b);
        if (n == 0) return Model.Velocity(x, t, condition);
        using var scope = torch.NewDisposeScope();
        var negative = _negative ?? torch.zeros_like(condition);
        var vc = Model.Velocity(x, t, condition);
        var vu = Model.Velocity(x, t, negative);
        var guided = Combine(vc, vu, Strength);
        if (n == ts.Length) return guided.MoveToOuterDisposeScope();
        var mask = x.PerSample(torch.tensor(inside.Select(b => b ? 1.0 : 0.0).ToArray(), dtype: x.Data.dtype, device: x.Data.device)).to(ScalarType.Bool);
        return torch.where(mask, guided, vc).MoveToOuterDisposeScope();
    }
}
