using MdtDist.Core;
using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>
/// MDT-dist's Velocity Matching term: the student's velocity v_S(x_t, t) is regressed onto
/// v_tgt = v_T − t·dv/dt, where v_T is the guided teacher velocity and dv/dt the student's total time derivative
/// along the teacher's flow (no gradient through the target). At the fixed point the student's single Euler step
/// x_t − t·v_S(x_t, t) lands on the end of the teacher trajectory through x_t.
/// <list type="bullet">
/// <item><see cref="DistillationMode.Discrete"/>: t_prev = t − Δ, x_prev = x_t − (t − t_prev)·v_T,
/// dv/dt = (v_S(x_t, t).detach() − v_S(x_prev, t_prev)) / Δ.</item>
/// <item><see cref="DistillationMode.Continuous"/>: dv/dt = ∂v_S/∂x·v_T + ∂v_S/∂t, an exact Jacobian-vector product
/// (<see cref="FlowModelJvp"/>).</item>
/// <item>Optional normalisation dv/dt ← dv/dt / (‖dv/dt‖ + c), one L2 norm per sample over all of its elements
/// (dense: all non-batch axes; rows: all rows × channels of the sample).</item>
/// </list>
/// </summary>
public sealed class VelocityMatchingLoss : DistillationPairLoss
{
    /// <summary>MDT-dist's default teacher guidance for the VM term.</summary>
    public const double DefaultGuidanceScale = 40.0;

    /// <summary>Creates the loss.</summary>
    /// <param name="mode"><see cref="DistillationMode.Discrete"/> or <see cref="DistillationMode.Continuous"/>.</param>
    /// <param name="interval">Δ (discrete step; also the lower end σ + Δ of the discrete time range).</param>
    /// <param name="dNorm">Normalise dv/dt per sample.</param>
    /// <param name="guidanceScale">Teacher guidance w (MDT-dist: 40).</param>
    /// <param name="dNormConstant">c in dv/dt / (‖dv/dt‖ + c) (MDT-dist: 0.1).</param>
    /// <param name="sigmaMin">σ_min of the path.</param>
    /// <param name="timeSampler">Base training-time distribution (logit-normal(1, 1) when null).</param>
    /// <exception cref="ArgumentException">A value is out of range or the mode is <see cref="DistillationMode.ConsistencyModel"/>.</exception>
    public VelocityMatchingLoss(DistillationMode mode = DistillationMode.Discrete, double interval = 0.01, bool dNorm = true,
        double guidanceScale = DefaultGuidanceScale, double dNormConstant = 0.1, double sigmaMin = RectifiedFlowPath.TrellisSigmaMin,
        TimeSampler? timeSampler = null)
        : base(new DistillationTimeSchedule(mode, interval, sigmaMin, 1, timeSampler), guidanceScale)
    {
        if (mode == DistillationMode.ConsistencyModel)
            throw new ArgumentException("the consistency baseline is ConsistencyDistillationLoss; VelocityMatchingLoss takes Discrete or Continuous.", nameof(mode));
        if (!(dNormConstant > 0) || !double.IsFinite(dNormConstant))
            throw new ArgumentException($"dNormConstant must be positive, got {dNormConstant}.", nameof(dNormConstant));
        DNorm = dNorm;
        DNormConstant = dNormConstant;
    }

    /// <summary>Whether dv/dt is normalised per sample.</summary>
    public bool DNorm { get; }

    /// <summary>c of the normalisation.</summary>
    public double DNormConstant { get; }

    /// <inheritdoc />
    protected override DistillationPair ComputeTarget(IFlowModel student, Latent xt, Tensor t, Tensor vTeacher, Tensor? condition, Dictionary<string, Tensor> values)
    {
        var vPred = StudentVelocity(student, xt, t, condition);
        values["v_pred"] = vPred;
        Tensor dvdt;
        if (Mode == DistillationMode.Continuous)
        {
            dvdt = FlowModelJvp.TotalDerivative(student, xt, t, condition, vTeacher);
        }
        else
        {
            using var _ = torch.no_grad();
            var tPrev = t - Interval;
            var xPrev = EulerStep(xt, t, tPrev, vTeacher);
            var vPrev = StudentVelocity(student, xt.With(xPrev), tPrev, condition);
            dvdt = (vPred.detach() - vPrev) / Interval;
            values["t_prev"] = tPrev;
            values["x_prev"] = xPrev;
            values["v_prev"] = vPrev;
        }
        if (DNorm)
        {
            var norm = xt.PerSample(xt.Layout.NormPerSample(dvdt));
            values["dv_dt_norm"] = norm.expand_as(dvdt);
            dvdt = dvdt / (norm + DNormConstant);
        }
        values["dv_dt"] = dvdt;
        var vTgt = vTeacher - xt.PerSample(t) * dvdt;
        values["v_tgt"] = vTgt;
        return new DistillationPair(vPred, vTgt, values);
    }
}

/// <summary>
/// Exact Jacobian-vector products of a flow model without forward-mode AD: J·u is obtained by differentiating the
/// vector-Jacobian product Jᵀw (built with <c>create_graph</c>) with respect to the dummy cotangent w along u — the
/// same double-backward construction that PyTorch's <c>torch.autograd.functional.jvp</c> uses.
/// Costs one forward and two backward passes of the model.
/// </summary>
public static class FlowModelJvp
{
    /// <summary>
    /// The total derivative of v(x, t) along (ẋ, ṫ): ∂v/∂x·ẋ + ∂v/∂t·ṫ, detached. Runs with gradients enabled even
    /// inside a <c>no_grad</c> block, and never accumulates into parameter gradients.
    /// </summary>
    /// <param name="model">The model (must be differentiable in x and t; a model that ignores t contributes 0 there).</param>
    /// <param name="x">The point x.</param>
    /// <param name="t">Per-sample times <c>[B]</c>.</param>
    /// <param name="condition">The model's condition.</param>
    /// <param name="tangentX">ẋ, the shape of <c>x.Data</c>.</param>
    /// <param name="tangentT">ṫ, <c>[B]</c>; ones when null.</param>
    /// <exception cref="ArgumentException">A shape does not match.</exception>
    public static Tensor TotalDerivative(IFlowModel model, Latent x, Tensor t, Tensor? condition, Tensor tangentX, Tensor? tangentT = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(tangentX);
        DistillationPairLoss.CheckShape(tangentX, x.Data, nameof(tangentX));
        ArgumentChecks.PerSampleTime(t, x.BatchSize);
        if (tangentT is not null) DistillationPairLoss.CheckShape(tangentT, t, nameof(tangentT));

        using var scope = torch.NewDisposeScope();
        using var grad = torch.enable_grad();
        var xIn = x.Data.detach().requires_grad_(true);
        var tIn = t.detach().requires_grad_(true);
        var y = model.Velocity(x.With(xIn), tIn, condition);
        DistillationPairLoss.CheckShape(y, x.Data, nameof(model));
        if (!y.requires_grad) return torch.zeros_like(y).MoveToOuterDisposeScope();
        var w = torch.zeros_like(y).requires_grad_(true);
        var vjp = torch.autograd.grad(new[] { y }, new[] { xIn, tIn }, new[] { w }, create_graph: true, allow_unused: true);
        var outs = new List<Tensor>();
        var tangents = new List<Tensor>();
        if (!vjp[0].IsInvalid && vjp[0].requires_grad) { outs.Add(vjp[0]); tangents.Add(tangentX.detach()); }
        if (!vjp[1].IsInvalid && vjp[1].requires_grad) { outs.Add(vjp[1]); tangents.Add((tangentT ?? torch.ones_like(t)).detach().to(t.dtype, t.device)); }
        if (outs.Count == 0) return torch.zeros_like(y).MoveToOuterDisposeScope();
        var jvp = torch.autograd.grad(outs, new[] { w }, tangents, allow_unused: true)[0];
        if (jvp.IsInvalid) return torch.zeros_like(y).MoveToOuterDisposeScope();
        return jvp.detach().MoveToOuterDisposeScope();
    }
}
