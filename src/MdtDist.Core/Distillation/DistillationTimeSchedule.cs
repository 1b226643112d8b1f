using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>How the MDT-dist velocity-matching target obtains the student's total time derivative dv/dt.</summary>
public enum DistillationMode
{
    /// <summary>
    /// A finite difference along one teacher Euler step of size Δ (MDT-dist's <c>discrete</c>, the released
    /// configs): dv/dt ≈ (v_S(x_t, t) − v_S(x_{t−Δ}, t − Δ)) / Δ.
    /// </summary>
    Discrete,

    /// <summary>The exact Jacobian-vector product of the student along (v_teacher, 1) (MDT-dist's <c>continuous</c>).</summary>
    Continuous,

    /// <summary>The consistency-distillation baseline with multiphase targets (MDT-dist's <c>cm</c>).</summary>
    ConsistencyModel,
}

/// <summary>
/// MDT-dist's training-time schedule (<c>FlowMDTTrainer.sample_t</c> / <c>get_target_t</c>): a base time sampler
/// u ∈ [0, 1] (logit-normal(1, 1) by default) mapped into [σ + Δ, 1] for <see cref="DistillationMode.Discrete"/>
/// and <see cref="DistillationMode.ConsistencyModel"/> (so that t − Δ stays ≥ σ) or into [σ, 1] for
/// <see cref="DistillationMode.Continuous"/>, and the multiphase target times of the consistency baseline.
/// </summary>
public sealed class DistillationTimeSchedule
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="mode">The distillation mode (decides the time map and whether targets subtract Δ).</param>
    /// <param name="interval">Δ, the teacher step of the discrete and consistency modes (MDT-dist default 0.01).</param>
    /// <param name="sigmaMin">σ_min of the flow path (TRELLIS 1e-5).</param>
    /// <param name="multiphase">Number of phases of the consistency targets (1 = every target is t = 0).</param>
    /// <param name="sampler">Base time distribution; logit-normal(1, 1) when null.</param>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public DistillationTimeSchedule(DistillationMode mode, double interval = 0.01, double sigmaMin = RectifiedFlowPath.TrellisSigmaMin, int multiphase = 1, TimeSampler? sampler = null)
    {
        if (!Enum.IsDefined(mode)) throw new ArgumentException($"unknown distillation mode {mode}.", nameof(mode));
        if (!(interval > 0 && interval < 1)) throw new ArgumentException($"interval must be in (0, 1), got {interval}.", nameof(interval));
        if (!(sigmaMin >= 0 && sigmaMin < 1)) throw new ArgumentException($"sigmaMin must be in [0, 1), got {sigmaMin}.", nameof(sigmaMin));
        if (multiphase < 1) throw new ArgumentException($"multiphase must be >= 1, got {multiphase}.", nameof(multiphase));
        Mode = mode;
        Interval = interval;
        SigmaMin = sigmaMin;
        Multiphase = multiphase;
        Sampler = sampler ?? LogitNormalTimeSampler.MdtDist;
    }

    /// <summary>The distillation mode.</summary>
    public DistillationMode Mode { get; }

    /// <summary>Δ.</summary>
    public double Interval { get; }

    /// <summary>σ_min.</summary>
    public double SigmaMin { get; }

    /// <summary>Number of consistency phases.</summary>
    public int Multiphase { get; }

    /// <summary>The base time distribution.</summary>
    public TimeSampler Sampler { get; }

    /// <summary>The smallest training time: σ + Δ (discrete, consistency) or σ (continuous).</summary>
    public double MinimumTime => Mode == DistillationMode.Continuous ? SigmaMin : SigmaMin + Interval;

    /// <summary>
    /// Maps base times u ∈ [0, 1] into the training range: σ + Δ + (1 − (Δ + σ))·u (discrete, consistency) or
    /// σ + (1 − σ)·u (continuous), in the reference's order of operations.
    /// </summary>
    public Tensor MapToTraining(Tensor u)
    {
        ArgumentNullException.ThrowIfNull(u);
        return Mode == DistillationMode.Continuous
            ? SigmaMin + (1.0 - SigmaMin) * u
            : (SigmaMin + Interval) + (1.0 - (Interval + SigmaMin)) * u;
    }

    /// <summary>Training times from raw draws of <see cref="Sampler"/>: <c>MapToTraining(Sampler.FromRaw(raw))</c>.</summary>
    public Tensor FromRaw(Tensor raw)
    {
        ArgumentNullException.ThrowIfNull(raw);
        using var scope = torch.NewDisposeScope();
        return MapToTraining(Sampler.FromRaw(raw)).MoveToOuterDisposeScope();
    }

    /// <summary>Draws <paramref name="batchSize"/> training times.</summary>
    public Tensor Sample(long batchSize, ScalarType dtype = ScalarType.Float32, Device? device = null, Generator? generator = null)
    {
        if (batchSize < 1) throw new ArgumentException($"batchSize must be >= 1, got {batchSize}.", nameof(batchSize));
        using var scope = torch.NewDisposeScope();
        return FromRaw(Sampler.DrawRaw(batchSize, dtype, device, generator)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The phase boundaries k / <see cref="Multiphase"/>, k = 0 … M−1, computed as numpy's
    /// <c>linspace(0, 1, M, endpoint=False)</c> (k·(1/M)).
    /// </summary>
    public double[] PhaseBoundaries()
    {
        double step = 1.0 / Multiphase;
        return Enumerable.Range(0, Multiphase).Select(k => k * step).ToArray();
    }

    /// <summary>
    /// The consistency target time of each t (<c>get_target_t</c>): t − Δ for discrete/consistency (t itself for
    /// continuous), then the largest phase boundary ≤ that value. Reproduces the reference's
    /// <c>argmax(t &lt; targets) − 1</c> exactly, including its wrap-around: when no boundary lies above the value
    /// (or the value is below 0) the index −1 selects the LAST boundary.
    /// </summary>
    public Tensor TargetTime(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        if (t.dim() != 1) throw new ArgumentException($"t must be 1-D [B], found shape [{string.Join(", ", t.shape)}].", nameof(t));
        using var scope = torch.NewDisposeScope();
        var q = Mode == DistillationMode.Continuous ? t : t - Interval;
        var targets = torch.tensor(PhaseBoundaries(), dtype: t.dtype, device: t.device);
        if (Multiphase == 1)
            return torch.zeros_like(t).MoveToOuterDisposeScope();
        var above = q.unsqueeze(1).lt(targets.unsqueeze(0)).to(t.dtype);
        var idx = above.argmax(1) - 1;
        idx = idx.remainder(Multiphase); // Python's index -1 → last element
        return targets.index_select(0, idx).MoveToOuterDisposeScope();
    }

    /// <inheritdoc />
    public override string ToString() => $"{Mode}: {Sampler} mapped to [{MinimumTime}, 1], Δ = {Interval}, multiphase {Multiphase}";
}
