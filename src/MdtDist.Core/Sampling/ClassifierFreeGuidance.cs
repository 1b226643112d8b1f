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
public sealed class ClassifierFreeGuidance : IFlowModel, IDisposable
{
    private readonly Tensor? _negative;
    private readonly object _pairLock = new();
    private Tensor? _pairCondition;
    private long _pairBatch;
    private Tensor? _pair;

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

    /// <summary>
    /// When true, a guided step evaluates the conditional and unconditional velocities in ONE call of the wrapped
    /// model on a batch of 2B: the latent repeated along the batch (<see cref="Latent.RepeatBatch"/>), t repeated, the
    /// condition and the negative condition concatenated; the output is split back (<see cref="Latent.SplitRepeated"/>).
    /// The per-sample arithmetic is the same; results differ from the two-call path only by the rounding of
    /// batch-size-dependent kernels (~1e-15 relative in float64). The concatenated condition is built once per
    /// condition tensor (kept until the next one), so a network's cross-attention K/V cache keyed on the condition
    /// still hits from step to step. Default false (two calls). <see cref="EvaluationsAt"/> still counts 2 network
    /// evaluations per guided step.
    /// </summary>
    public bool BatchedPasses { get; init; }

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
        Tensor vc, vu;
        if (BatchedPasses)
        {
            var x2 = x.RepeatBatch(2);
            var t2 = torch.cat(new[] { t, t }, 0);
            var v2 = Model.Velocity(x2, t2, PairedCondition(condition, x.BatchSize));
            var halves = x.SplitRepeated(v2, 2);
            (vc, vu) = (halves[0], halves[1]);
        }
        else
        {
            var negative = _negative ?? torch.zeros_like(condition);
            vc = Model.Velocity(x, t, condition);
            vu = Model.Velocity(x, t, negative);
        }
        var guided = Combine(vc, vu, Strength);
        if (n == ts.Length) return guided.MoveToOuterDisposeScope();
        var mask = x.PerSample(torch.tensor(inside.Select(b => b ? 1.0 : 0.0).ToArray(), dtype: x.Data.dtype, device: x.Data.device)).to(ScalarType.Bool);
        return torch.where(mask, guided, vc).MoveToOuterDisposeScope();
    }

    /// <summary>Frees the concatenated condition kept by <see cref="BatchedPasses"/> (the wrapper stays usable).</summary>
    public void Dispose()
    {
        lock (_pairLock)
        {
            _pair?.Dispose();
            _pair = null;
            _pairCondition = null;
        }
    }

    /// <summary>
    /// <c>cat([condition, negative], 0)</c> with both expanded to batch <paramref name="batch"/> (a batch-1 condition is
    /// shared), built once per condition tensor and batch size. The previous one is disposed when replaced.
    /// </summary>
    private Tensor PairedCondition(Tensor condition, long batch)
    {
        lock (_pairLock)
        {
            if (_pair is not null && ReferenceEquals(_pairCondition, condition) && _pairBatch == batch) return _pair;
            using var scope = torch.NewDisposeScope();
            var negative = _negative is null ? torch.zeros_like(condition) : _negative.to(condition.dtype, condition.device);
            Tensor Expand(Tensor c, string name)
            {
                if (c.dim() < 1 || (c.shape[0] != batch && c.shape[0] != 1))
                    throw new ArgumentException($"{name}: expected batch {batch} or 1 on axis 0, found shape [{string.Join(", ", c.shape)}].", name);
                if (c.shape[0] == batch) return c;
                var shape = c.shape.ToArray();
                shape[0] = batch;
                return c.expand(shape);
            }
            if (!condition.shape.Skip(1).SequenceEqual(negative.shape.Skip(1)))
                throw new ArgumentException($"negativeCondition: batched passes need the shape of the condition beyond axis 0, [{string.Join(", ", condition.shape.Skip(1))}], found [{string.Join(", ", negative.shape.Skip(1))}].", nameof(condition));
            var pair = torch.cat(new[] { Expand(condition, "condition"), Expand(negative, "negativeCondition") }, 0).DetachFromDisposeScope();
            _pair?.Dispose();
            _pair = pair;
            _pairCondition = condition;
            _pairBatch = batch;
            return _pair;
        }
    }
}
