using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>The terms of a <see cref="VelocityDistillationLoss"/> evaluation.</summary>
/// <param name="Loss">The mean over all elements (differentiable through <paramref name="VFake"/> only).</param>
/// <param name="Elementwise">λ·(v_pred − v_tgt + v_fake − sg(v_fake))², the latent's shape.</param>
/// <param name="PerSample">Mean of <paramref name="Elementwise"/> per sample, <c>[B]</c>, detached.</param>
/// <param name="VFake">The student's velocity at (ε', t = 1), with gradient.</param>
/// <param name="XFake">The one-step sample ε' − v_fake.</param>
/// <param name="Pair">The pair evaluated (without gradient) around <paramref name="XFake"/>.</param>
public sealed record VelocityDistillationTerms(Tensor Loss, Tensor Elementwise, Tensor PerSample, Tensor VFake, Tensor XFake, DistillationPair Pair);

/// <summary>
/// MDT-dist's Velocity Distillation term. The student's one-step sample x_fake = ε' − v_S(ε', t = 1) (σ_min is
/// ignored here, as in the reference) is noised again to (x_t, t) with the VM noise ε; the pair of
/// <see cref="PairLoss"/> is evaluated there without gradient (teacher guidance 100 by default), and the surrogate
/// λ·(v_pred − v_tgt + v_fake − sg(v_fake))² has the value of the pair's squared gap but sends its gradient only
/// through v_fake, i.e. 2λ·(v_pred − v_tgt)·∂v_fake/∂θ.
/// </summary>
public sealed class VelocityDistillationLoss
{
    /// <summary>MDT-dist's default teacher guidance for the VD term.</summary>
    public const double DefaultGuidanceScale = 100.0;

    /// <summary>Creates the loss around the pair of <paramref name="pairLoss"/> (usually the objective's VM loss).</summary>
    /// <exception cref="ArgumentException">The guidance scale is not finite.</exception>
    public VelocityDistillationLoss(DistillationPairLoss pairLoss, double guidanceScale = DefaultGuidanceScale)
    {
        ArgumentNullException.ThrowIfNull(pairLoss);
        if (!double.IsFinite(guidanceScale)) throw new ArgumentException($"guidanceScale must be finite, got {guidanceScale}.", nameof(guidanceScale));
        PairLoss = pairLoss;
        GuidanceScale = guidanceScale;
    }

    /// <summary>The pair evaluated around the fake sample.</summary>
    public DistillationPairLoss PairLoss { get; }

    /// <summary>Teacher guidance w of this term.</summary>
    public double GuidanceScale { get; }

    /// <summary>Evaluates the term.</summary>
    /// <param name="student">The student.</param>
    /// <param name="teacher">The frozen teacher.</param>
    /// <param name="noiseFake">ε' as a latent (its layout is that of the batch).</param>
    /// <param name="noise">ε used to re-noise x_fake (MDT-dist reuses the VM noise).</param>
    /// <param name="t">Per-sample times <c>[B]</c> (MDT-dist reuses the VM times).</param>
    /// <param name="condition">The condition.</param>
    /// <param name="negativeCondition">The teacher's unconditional input (zeros when null).</param>
    /// <param name="weight">λ_VD.</param>
    /// <exception cref="ArgumentException">A shape does not match.</exception>
    public VelocityDistillationTerms Compute(IFlowModel student, IFlowModel teacher, Latent noiseFake, Tensor noise, Tensor t, Tensor? condition,
        Tensor? negativeCondition = null, double weight = 1.0)
    {
        ArgumentNullException.ThrowIfNull(student);
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(noiseFake);
        var data = noiseFake.Data;
        var ones = torch.ones(new[] { noiseFake.BatchSize }, dtype: data.dtype, device: data.device);
        var vFake = student.Velocity(noiseFake, ones, condition);
        DistillationPairLoss.CheckShape(vFake, data, nameof(student));
        var xFake = data - vFake;
        DistillationPair pair;
        using (torch.no_grad())
            pair = PairLoss.ComputePair(student, teacher, noiseFake.With(xFake), noise, t, condition, negativeCondition, GuidanceScale);
        var gap = pair.Prediction - pair.Target + vFake - vFake.detach();
        var elementwise = weight * gap.square();
        return new VelocityDistillationTerms(elementwise.mean(), elementwise, noiseFake.Layout.MeanPerSample(elementwise.detach()), vFake, xFake, pair);
    }
}
