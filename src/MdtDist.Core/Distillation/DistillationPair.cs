using MdtDist.Core;
using System.Collections;
using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>
/// A (prediction, target) pair whose squared difference is a distillation loss — the result of MDT-dist's
/// <c>get_v_pred_tgt</c> — together with every intermediate tensor under the reference's local-variable names
/// (<c>x_t</c>, <c>v_teacher</c> (after guidance), <c>v_teacher_neg</c>, <c>v_pred</c>, <c>x_prev</c>, <c>v_prev</c>,
/// <c>t_prev</c>, <c>dv_dt</c> (after normalisation), <c>dv_dt_norm</c> (broadcast to the latent's shape),
/// <c>v_tgt</c>, <c>t_tgt</c>, <c>pred_tgt</c>, <c>teacher_tgt</c>, <c>ret_pred</c>, <c>ret_tgt</c>). Only the names a
/// mode computes are present.
/// </summary>
public sealed class DistillationPair : IReadOnlyDictionary<string, Tensor>
{
    private readonly Dictionary<string, Tensor> _values;

    /// <summary>Creates a pair; <paramref name="values"/> receives <c>ret_pred</c> and <c>ret_tgt</c> and is kept (not copied).</summary>
    public DistillationPair(Tensor prediction, Tensor target, Dictionary<string, Tensor> values)
    {
        ArgumentNullException.ThrowIfNull(prediction);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(values);
        Prediction = prediction;
        Target = target;
        values["ret_pred"] = prediction;
        values["ret_tgt"] = target;
        _values = values;
    }

    /// <summary>The prediction (carries the student's graph when computed with gradients enabled).</summary>
    public Tensor Prediction { get; }

    /// <summary>The target (never carries a graph).</summary>
    public Tensor Target { get; }

    /// <inheritdoc />
    public Tensor this[string key] => _values.TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"no intermediate '{key}' (available: {string.Join(", ", _values.Keys)}).");

    /// <inheritdoc />
    public IEnumerable<string> Keys => _values.Keys;

    /// <inheritdoc />
    public IEnumerable<Tensor> Values => _values.Values;

    /// <inheritdoc />
    public int Count => _values.Count;

    /// <inheritdoc />
    public bool ContainsKey(string key) => _values.ContainsKey(key);

    /// <inheritdoc />
    public bool TryGetValue(string key, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out Tensor value) => _values.TryGetValue(key, out value);

    /// <inheritdoc />
    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() => _values.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}

/// <summary>The terms of a pair loss λ·(prediction − target)².</summary>
/// <param name="Loss">The mean over all elements of the batch (differentiable; for sparse latents bigger samples weigh more, as the reference).</param>
/// <param name="Elementwise">λ·(prediction − target)², the latent's shape.</param>
/// <param name="PerSample">The mean of <paramref name="Elementwise"/> over each sample's elements, <c>[B]</c>, detached.</param>
/// <param name="Pair">The pair and its intermediates.</param>
public sealed record PairLossTerms(Tensor Loss, Tensor Elementwise, Tensor PerSample, DistillationPair Pair);

/// <summary>
/// The common part of MDT-dist's <c>get_v_pred_tgt</c>: x_t on the rectified-flow path, the guided teacher velocity
/// (1 + w)·v_T(x_t, t, c) − w·v_T(x_t, t, c⁻) with c⁻ = 0 unless given, then a mode-specific (prediction, target)
/// pair. Written once against <see cref="Latent"/>, so dense and sparse (row) latents share every formula.
/// </summary>
public abstract class DistillationPairLoss
{
    /// <summary>Initialises the shared settings.</summary>
    protected DistillationPairLoss(DistillationTimeSchedule schedule, double guidanceScale)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        if (!double.IsFinite(guidanceScale)) throw new ArgumentException($"guidanceScale must be finite, got {guidanceScale}.", nameof(guidanceScale));
        Schedule = schedule;
        Path = new RectifiedFlowPath(schedule.SigmaMin);
        GuidanceScale = guidanceScale;
    }

    /// <summary>The training-time schedule that belongs to this mode (time map, Δ, σ, multiphase).</summary>
    public DistillationTimeSchedule Schedule { get; }

    /// <summary>The flow path (σ_min of <see cref="Schedule"/>).</summary>
    public RectifiedFlowPath Path { get; }

    /// <summary>Δ.</summary>
    public double Interval => Schedule.Interval;

    /// <summary>The mode.</summary>
    public DistillationMode Mode => Schedule.Mode;

    /// <summary>The teacher's guidance strength w (no guidance pass when w ≤ 0).</summary>
    public double GuidanceScale { get; }

    /// <summary>
    /// Computes the (prediction, target) pair at x_t = (1 − t)·x0 + (σ + (1 − σ)t)·ε. The teacher runs without
    /// gradient; the prediction carries the student's graph if gradients are enabled.
    /// </summary>
    /// <param name="student">The student being trained.</param>
    /// <param name="teacher">The frozen teacher.</param>
    /// <param name="x0">The clean latent (its layout is used for every per-sample quantity).</param>
    /// <param name="noise">ε, the shape of <c>x0.Data</c>.</param>
    /// <param name="t">Per-sample times <c>[B]</c>.</param>
    /// <param name="condition">The condition given to the student and to the teacher's conditional pass (may be null).</param>
    /// <param name="negativeCondition">The teacher's unconditional input; zeros like <paramref name="condition"/> when null.</param>
    /// <param name="guidanceScale">Overrides <see cref="GuidanceScale"/>.</param>
    /// <exception cref="ArgumentException">A shape does not match.</exception>
    public DistillationPair ComputePair(IFlowModel student, IFlowModel teacher, Latent x0, Tensor noise, Tensor t, Tensor? condition,
        Tensor? negativeCondition = null, double? guidanceScale = null)
    {
        ArgumentNullException.ThrowIfNull(student);
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(t);
        CheckShape(noise, x0.Data, nameof(noise));
        ArgumentChecks.PerSampleTime(t, x0.BatchSize);
        double w = guidanceScale ?? GuidanceScale;
        if (!double.IsFinite(w)) throw new ArgumentException($"guidanceScale must be finite, got {w}.", nameof(guidanceScale));

        var tt = t.to(x0.Data.dtype, x0.Data.device);
        var xt = x0.With(Path.Interpolate(x0, noise, tt));
        var values = new Dictionary<string, Tensor> { ["x_t"] = xt.Data };
        var vTeacher = TeacherVelocity(teacher, xt, tt, condition, negativeCondition, w, values);
        values["v_teacher"] = vTeacher;
        return ComputeTarget(student, xt, tt, vTeacher, condition, values);
    }

    /// <summary>Evaluates λ·(prediction − target)² (see <see cref="ComputePair"/> for the arguments).</summary>
    public PairLossTerms Compute(IFlowModel student, IFlowModel teacher, Latent x0, Tensor noise, Tensor t, Tensor? condition,
        Tensor? negativeCondition = null, double weight = 1.0, double? guidanceScale = null)
    {
        var pair = ComputePair(student, teacher, x0, noise, t, condition, negativeCondition, guidanceScale);
        var elementwise = weight * (pair.Prediction - pair.Target).square();
        return new PairLossTerms(elementwise.mean(), elementwise, x0.Layout.MeanPerSample(elementwise.detach()), pair);
    }

    /// <summary>
    /// The mode-specific part: given x_t, t and the guided teacher velocity, produce the pair. Implementations add
    /// their intermediates to <paramref name="values"/> under the reference's names.
    /// </summary>
    protected abstract DistillationPair ComputeTarget(IFlowModel student, Latent xt, Tensor t, Tensor vTeacher, Tensor? condition, Dictionary<string, Tensor> values);

    /// <summary>Evaluates the student and checks that it returned the latent's shape.</summary>
    protected static Tensor StudentVelocity(IFlowModel student, Latent x, Tensor t, Tensor? condition)
    {
        var v = student.Velocity(x, t, condition);
        CheckShape(v, x.Data, nameof(student));
        return v;
    }

    /// <summary>One Euler step x − (t − t_prev)·v, with t − t_prev formed per sample as the reference does.</summary>
    protected static Tensor EulerStep(Latent x, Tensor t, Tensor tPrev, Tensor v) => RectifiedFlowPath.EulerStep(x, t, tPrev, v);

    internal static Tensor TeacherVelocity(IFlowModel teacher, Latent xt, Tensor t, Tensor? condition, Tensor? negativeCondition, double w,
        Dictionary<string, Tensor>? values)
    {
        using var _ = torch.no_grad();
        var v = teacher.Velocity(xt, t, condition);
        CheckShape(v, xt.Data, nameof(teacher));
        if (w > 0 && condition is not null)
        {
            var neg = negativeCondition ?? torch.zeros_like(condition);
            var vNeg = teacher.Velocity(xt, t, neg);
            CheckShape(vNeg, xt.Data, nameof(teacher));
            if (values is not null) values["v_teacher_neg"] = vNeg;
            v = MdtDist.Core.Sampling.ClassifierFreeGuidance.Combine(v, vNeg, w);
        }
        return v;
    }

    internal static void CheckShape(Tensor actual, Tensor expected, string name)
    {
        if (!actual.shape.SequenceEqual(expected.shape))
            throw new ArgumentException($"{name}: expected shape [{string.Join(", ", expected.shape)}], found [{string.Join(", ", actual.shape)}].", name);
    }
}
