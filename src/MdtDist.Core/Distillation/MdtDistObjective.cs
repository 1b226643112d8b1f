using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Distillation;

/// <summary>
/// The settings of MDT-dist's trainer (<c>FlowMDTTrainer</c>'s arguments), with the reference defaults.
/// </summary>
public sealed record MdtDistSettings
{
    /// <summary><c>distill_type</c>.</summary>
    public DistillationMode Mode { get; init; } = DistillationMode.Discrete;

    /// <summary><c>distill_interval</c> Δ.</summary>
    public double Interval { get; init; } = 0.01;

    /// <summary><c>sigma_min</c>.</summary>
    public double SigmaMin { get; init; } = RectifiedFlowPath.TrellisSigmaMin;

    /// <summary><c>cfg_teacher_vm</c>.</summary>
    public double GuidanceVm { get; init; } = VelocityMatchingLoss.DefaultGuidanceScale;

    /// <summary><c>cfg_teacher_vd</c>.</summary>
    public double GuidanceVd { get; init; } = VelocityDistillationLoss.DefaultGuidanceScale;

    /// <summary><c>multiphase</c> (consistency mode only).</summary>
    public int Multiphase { get; init; } = 1;

    /// <summary><c>lambda_vm</c> (0 disables the term).</summary>
    public double LambdaVm { get; init; } = 1.0;

    /// <summary><c>lambda_vd</c> (0 disables the term and its noise draw).</summary>
    public double LambdaVd { get; init; } = 1.0;

    /// <summary><c>d_norm</c>.</summary>
    public bool DNorm { get; init; } = true;

    /// <summary>The constant c of the d-norm.</summary>
    public double DNormConstant { get; init; } = 0.1;

    /// <summary><c>t_schedule</c>: the base time distribution (logit-normal(1, 1)).</summary>
    public TimeSampler TimeSampler { get; init; } = LogitNormalTimeSampler.MdtDist;
}

/// <summary>
/// The random inputs of one objective evaluation, drawn in the reference's order: ε = randn_like(x0), the time
/// sampler's raw draw <c>[B]</c>, then ε' = randn_like(x0) (only when the VD term is on).
/// </summary>
/// <param name="Noise">ε.</param>
/// <param name="TRaw">The raw time draw (standard normal for logit-normal); mapped by the objective's schedule.</param>
/// <param name="NoiseFake">ε' of the VD term (may be null when λ_VD = 0).</param>
public sealed record MdtDistDraws(Tensor Noise, Tensor TRaw, Tensor? NoiseFake);

/// <summary>The terms of one <see cref="MdtDistObjective"/> evaluation.</summary>
/// <param name="Loss">The mean of <paramref name="Elementwise"/> over all elements (reference <c>terms["loss"]</c>); call backward on this.</param>
/// <param name="LossVm">Mean of the VM term, or null when λ_VM = 0.</param>
/// <param name="LossVd">Mean of the VD term, or null when λ_VD = 0.</param>
/// <param name="Elementwise">loss_vm + loss_vd elementwise.</param>
/// <param name="PerSample">Mean of <paramref name="Elementwise"/> per sample, <c>[B]</c>, detached (for time-binned logging).</param>
/// <param name="T">The training times <c>[B]</c>.</param>
/// <param name="Vm">The VM terms, or null.</param>
/// <param name="Vd">The VD terms, or null.</param>
public sealed record MdtDistTerms(Tensor Loss, Tensor? LossVm, Tensor? LossVd, Tensor Elementwise, Tensor PerSample, Tensor T,
    PairLossTerms? Vm, VelocityDistillationTerms? Vd);

/// <summary>
/// MDT-dist's combined objective (<c>FlowMDTTrainer.training_losses</c>): L = λ_VM·(v_pred − v_tgt)² at (x0, ε, t)
/// + λ_VD·(v_pred' − v_tgt' + v_fake − sg(v_fake))² around the one-step fake sample, both elementwise, averaged
/// over all elements. The VM term uses <see cref="VmLoss"/> (discrete, continuous or the consistency baseline);
/// the VD term evaluates the same kind of pair with its own guidance.
/// </summary>
public sealed class MdtDistObjective
{
    /// <summary>Creates the objective from its parts.</summary>
    /// <param name="vmLoss">The pair loss (its schedule also supplies the training times).</param>
    /// <param name="lambdaVm">λ_VM ≥ 0.</param>
    /// <param name="lambdaVd">λ_VD ≥ 0.</param>
    /// <param name="guidanceVd">Teacher guidance of the VD term.</param>
    /// <exception cref="ArgumentException">A weight is negative or both are 0.</exception>
    public MdtDistObjective(DistillationPairLoss vmLoss, double lambdaVm = 1.0, double lambdaVd = 1.0, double guidanceVd = VelocityDistillationLoss.DefaultGuidanceScale)
    {
        ArgumentNullException.ThrowIfNull(vmLoss);
        if (!(lambdaVm >= 0) || !double.IsFinite(lambdaVm)) throw new ArgumentException($"lambdaVm must be >= 0, got {lambdaVm}.", nameof(lambdaVm));
        if (!(lambdaVd >= 0) || !double.IsFinite(lambdaVd)) throw new ArgumentException($"lambdaVd must be >= 0, got {lambdaVd}.", nameof(lambdaVd));
        if (lambdaVm == 0 && lambdaVd == 0) throw new ArgumentException("lambdaVm and lambdaVd are both 0: the objective would be empty.", nameof(lambdaVd));
        VmLoss = vmLoss;
        LambdaVm = lambdaVm;
        LambdaVd = lambdaVd;
        VdLoss = new VelocityDistillationLoss(vmLoss, guidanceVd);
    }

    /// <summary>Creates the objective from MDT-dist's trainer settings.</summary>
    public static MdtDistObjective Create(MdtDistSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        DistillationPairLoss pair = settings.Mode == DistillationMode.ConsistencyModel
            ? new ConsistencyDistillationLoss(settings.Multiphase, settings.Interval, settings.GuidanceVm, settings.SigmaMin, settings.TimeSampler)
            : new VelocityMatchingLoss(settings.Mode, settings.Interval, settings.DNorm, settings.GuidanceVm, settings.DNormConstant, settings.SigmaMin, settings.TimeSampler);
        return new MdtDistObjective(pair, settings.LambdaVm, settings.LambdaVd, settings.GuidanceVd);
    }

    /// <summary>The VM pair loss.</summary>
    public DistillationPairLoss VmLoss { get; }

    /// <summary>The VD term.</summary>
    public VelocityDistillationLoss VdLoss { get; }

    /// <summary>λ_VM.</summary>
    public double LambdaVm { get; }

    /// <summary>λ_VD.</summary>
    public double LambdaVd { get; }

    /// <summary>The training-time schedule.</summary>
    public DistillationTimeSchedule Schedule => VmLoss.Schedule;

    /// <summary>Draws ε, the raw times and ε' (when λ_VD &gt; 0) from <paramref name="generator"/> in the reference's order.</summary>
    public MdtDistDraws Draw(Latent x0, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(x0);
        var d = x0.Data;
        var noise = torch.randn(d.shape, dtype: d.dtype, device: d.device, generator: generator);
        var raw = Schedule.Sampler.DrawRaw(x0.BatchSize, d.dtype, d.device, generator);
        var fake = LambdaVd > 0 ? torch.randn(d.shape, dtype: d.dtype, device: d.device, generator: generator) : null;
        return new MdtDistDraws(noise, raw, fake);
    }

    /// <summary>Draws the randomness from <paramref name="generator"/> and evaluates the objective.</summary>
    public MdtDistTerms Compute(IFlowModel student, IFlowModel teacher, Latent x0, Tensor? condition, Generator? generator, Tensor? negativeCondition = null) =>
        Compute(student, teacher, x0, condition, Draw(x0, generator), negativeCondition);

    /// <summary>Evaluates the objective with precomputed random inputs (e.g. the golden vectors' <c>in.noise</c>, <c>in.t_raw</c>, <c>in.noise_fake</c>).</summary>
    /// <exception cref="ArgumentException">A draw has the wrong shape, or ε' is missing while λ_VD &gt; 0.</exception>
    public MdtDistTerms Compute(IFlowModel student, IFlowModel teacher, Latent x0, Tensor? condition, MdtDistDraws draws, Tensor? negativeCondition = null)
    {
        ArgumentNullException.ThrowIfNull(student);
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(draws);
        DistillationPairLoss.CheckShape(draws.Noise, x0.Data, "draws.Noise");
        if (draws.TRaw.dim() != 1 || draws.TRaw.shape[0] != x0.BatchSize)
            throw new ArgumentException($"draws.TRaw must have shape [{x0.BatchSize}], found [{string.Join(", ", draws.TRaw.shape)}].", nameof(draws));
        if (LambdaVd > 0)
        {
            if (draws.NoiseFake is null) throw new ArgumentException("draws.NoiseFake is required when lambdaVd > 0.", nameof(draws));
            DistillationPairLoss.CheckShape(draws.NoiseFake, x0.Data, "draws.NoiseFake");
        }

        var t = Schedule.FromRaw(draws.TRaw).to(x0.Data.dtype, x0.Data.device);
        Tensor? total = null;
        PairLossTerms? vm = null;
        VelocityDistillationTerms? vd = null;
        if (LambdaVm > 0)
        {
            vm = VmLoss.Compute(student, teacher, x0, draws.Noise, t, condition, negativeCondition, LambdaVm);
            total = vm.Elementwise;
        }
        if (LambdaVd > 0)
        {
            vd = VdLoss.Compute(student, teacher, x0.With(draws.NoiseFake!), draws.Noise, t, condition, negativeCondition, LambdaVd);
            total = total is null ? vd.Elementwise : total + vd.Elementwise;
        }
        var loss = total!.mean();
        return new MdtDistTerms(loss, vm?.Loss, vd?.Loss, total, x0.Layout.MeanPerSample(total.detach()), t, vm, vd);
    }
}

/// <summary>
/// MDT-dist's time-binned loss logging: bin i ∈ 0…9 holds the samples with edges[i] ≤ t &lt; edges[i+1], edges =
/// numpy's <c>linspace(0, 1, 11)</c> (<c>np.digitize(t, edges) − 1</c>); t = 1 falls in no bin, as in the reference.
/// </summary>
public static class TimeBins
{
    /// <summary>Number of bins.</summary>
    public const int Count = 10;

    /// <summary>The bin of each time (−1 or 10 when outside [0, 1)).</summary>
    public static int[] Assign(IReadOnlyList<double> t)
    {
        ArgumentNullException.ThrowIfNull(t);
        var edges = Edges();
        var bins = new int[t.Count];
        for (int i = 0; i < t.Count; i++)
        {
            int k = 0;
            while (k < edges.Length && edges[k] <= t[i]) k++;
            bins[i] = k - 1;
        }
        return bins;
    }

    /// <summary>The mean per-sample loss in each non-empty bin.</summary>
    public static IReadOnlyDictionary<int, double> MeanPerBin(IReadOnlyList<double> t, IReadOnlyList<double> perSampleLoss)
    {
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(perSampleLoss);
        if (t.Count != perSampleLoss.Count) throw new ArgumentException($"{t.Count} times but {perSampleLoss.Count} losses.", nameof(perSampleLoss));
        var bins = Assign(t);
        var result = new SortedDictionary<int, double>();
        for (int b = 0; b < Count; b++)
        {
            var members = Enumerable.Range(0, t.Count).Where(i => bins[i] == b).Select(i => perSampleLoss[i]).ToList();
            if (members.Count > 0) result[b] = members.Average();
        }
        return result;
    }

    private static double[] Edges()
    {
        var e = new double[Count + 1];
        double step = 1.0 / Count;
        for (int i = 0; i < Count; i++) e[i] = i * step;
        e[Count] = 1.0;
        return e;
    }
}
