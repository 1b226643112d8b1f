using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>
/// MDT-dist's consistency-distillation baseline (<c>distill_type = "cm"</c>), kept for comparisons. With
/// t_tgt = <see cref="DistillationTimeSchedule.TargetTime"/>(t) (multiphase boundaries) and t_prev = t − Δ:
/// prediction = x_t − (t − t_tgt)·v_S(x_t, t) (with gradient); target = x_prev − (t_prev − t_tgt)·v_S(x_prev, t_prev)
/// with x_prev = x_t − (t − t_prev)·v_T, without gradient. The per-sample d-norm does not apply to this mode.
/// </summary>
public sealed class ConsistencyDistillationLoss : DistillationPairLoss
{
    /// <summary>Creates the loss.</summary>
    /// <param name="multiphase">Number of phases (1: every target time is 0).</param>
    /// <param name="interval">Δ, the teacher step.</param>
    /// <param name="guidanceScale">Teacher guidance w.</param>
    /// <param name="sigmaMin">σ_min of the path.</param>
    /// <param name="timeSampler">Base training-time distribution (logit-normal(1, 1) when null).</param>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public ConsistencyDistillationLoss(int multiphase = 1, double interval = 0.01, double guidanceScale = VelocityMatchingLoss.DefaultGuidanceScale,
        double sigmaMin = RectifiedFlowPath.TrellisSigmaMin, TimeSampler? timeSampler = null)
        : base(new DistillationTimeSchedule(DistillationMode.ConsistencyModel, interval, sigmaMin, multiphase, timeSampler), guidanceScale)
    {
    }

    /// <summary>Number of phases.</summary>
    public int Multiphase => Schedule.Multiphase;

    /// <inheritdoc />
    protected override DistillationPair ComputeTarget(IFlowModel student, Latent xt, Tensor t, Tensor vTeacher, Tensor? condition, Dictionary<string, Tensor> values)
    {
        var tTgt = Schedule.TargetTime(t);
        var tPrev = t - Interval;
        var vPred = StudentVelocity(student, xt, t, condition);
        var predTgt = EulerStep(xt, t, tTgt, vPred);
        Tensor xPrev, vPrev, teacherTgt;
        using (torch.no_grad())
        {
            xPrev = EulerStep(xt, t, tPrev, vTeacher);
            vPrev = StudentVelocity(student, xt.With(xPrev), tPrev, condition);
            teacherTgt = EulerStep(xt.With(xPrev), tPrev, tTgt, vPrev);
        }
        values["v_pred"] = vPred;
        values["t_tgt"] = tTgt;
        values["t_prev"] = tPrev;
        values["pred_tgt"] = predTgt;
        values["x_prev"] = xPrev;
        values["v_prev"] = vPrev;
        values["teacher_tgt"] = teacherTgt;
        return new DistillationPair(predTgt, teacherTgt, values);
    }
}
