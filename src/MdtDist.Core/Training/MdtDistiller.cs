using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// MDT-dist training: a student (initialised from the teacher) is trained with <see cref="MdtDistObjective"/> against
/// a frozen teacher, with AdamW, EMA copies, TRELLIS's adaptive gradient clipping, gradient accumulation, optional
/// float32 master weights, time-binned loss logging, atomic checkpoints and exact resume.
/// <para>
/// Reproducibility: all randomness of the objective comes from the distiller's own <see cref="torch.Generator"/>
/// (seeded by <see cref="TrainingOptions.Seed"/>; its state is checkpointed), and the data of step s comes from
/// <see cref="IDistillationDataSource.GetBatch"/>(s). On the CPU a run that is stopped, checkpointed and resumed
/// produces bit-identical weights to an uninterrupted run.
/// </para>
/// <para>
/// A step whose loss or gradients are not finite changes no weight (no optimizer step, no clipping statistics), is
/// counted in <see cref="FlowTrainer.SkippedSteps"/>, logged as a warning, and the run continues; the EMA still moves toward the
/// unchanged weights, as in TRELLIS (<see cref="TrainingOptions.EmaOnSkippedStep"/>).
/// </para>
/// <para>
/// The update itself is the common training loop shared with <see cref="FlowMatchingTrainer"/> (TRELLIS's
/// <c>BasicTrainer.run_step</c>); <see cref="TrainStep(IReadOnlyList{DistillationBatch}, IReadOnlyList{MdtDistDraws}?)"/>
/// drives it one step at a time with given micro-batches and draws.
/// </para>
/// </summary>
public sealed class MdtDistiller : FlowTrainer
{

    /// <summary>Creates a distiller for an already initialised student.</summary>
    /// <param name="teacher">The frozen teacher (any flow model: a network, an analytic field, a guided wrapper).</param>
    /// <param name="student">The student; its module's trainable parameters are optimised.</param>
    /// <param name="objective">The MDT-dist objective.</param>
    /// <param name="options">Training settings.</param>
    /// <param name="logger">Receives step summaries and warnings (none when null).</param>
    /// <exception cref="ArgumentException">An option is out of range or the student has no trainable parameters.</exception>
    public MdtDistiller(IFlowModel teacher, IFlowNetwork student, MdtDistObjective objective, MdtDistillerOptions? options = null, ILogger? logger = null)
        : base(Checked(teacher, student, objective, options ??= new MdtDistillerOptions()), options, logger, "student")
    {
        Teacher = teacher;
        Student = student;
        Objective = objective;
        Options = options;
    }

    /// <summary>The student, once the arguments are checked (before the training state is built).</summary>
    private static IFlowNetwork Checked(IFlowModel teacher, IFlowNetwork student, MdtDistObjective objective, MdtDistillerOptions options)
    {
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(student);
        ArgumentNullException.ThrowIfNull(objective);
        TrainerCore.Validate(options);
        if (ReferenceEquals(teacher, student)) throw new ArgumentException("the teacher and the student must be different objects.", nameof(student));
        var trainable = student.Module.parameters().Where(p => p.requires_grad).ToList();
        if (teacher is IFlowNetwork tn && trainable.Any(mp => tn.Module.parameters().Any(tp => tp.Handle == mp.Handle)))
            throw new ArgumentException("the teacher and the student share parameters; create the student with FromTeacher or a separate instance.", nameof(student));
        return student;
    }

    /// <summary>
    /// Creates a student from <paramref name="createStudent"/> (a fresh network of the teacher's architecture), copies
    /// the teacher's weights into it (a deep copy: separate storage), freezes the teacher (no gradients, eval mode),
    /// and returns the distiller.
    /// </summary>
    /// <exception cref="ArgumentException">The factory returned the teacher itself or a network whose state dict does not match.</exception>
    public static MdtDistiller FromTeacher(IFlowNetwork teacher, Func<IFlowNetwork> createStudent, MdtDistObjective objective,
        MdtDistillerOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(createStudent);
        var student = createStudent() ?? throw new ArgumentException("the student factory returned null.", nameof(createStudent));
        if (ReferenceEquals(student, teacher) || ReferenceEquals(student.Module, teacher.Module))
            throw new ArgumentException("the student factory must build a new network, not return the teacher.", nameof(createStudent));
        var sd = teacher.Module.state_dict();
        using (torch.no_grad())
            student.Module.load_state_dict(sd, strict: true);
        Freeze(teacher);
        return new MdtDistiller(teacher, student, objective, options, logger);
    }

    /// <summary>Freezes a network: no parameter requires a gradient, and the module is in eval mode.</summary>
    public static void Freeze(IFlowNetwork network)
    {
        ArgumentNullException.ThrowIfNull(network);
        foreach (var p in network.Module.parameters()) p.requires_grad = false;
        network.Module.eval();
    }

    /// <summary>The frozen teacher.</summary>
    public IFlowModel Teacher { get; }

    /// <summary>The student being trained.</summary>
    public IFlowNetwork Student { get; }

    /// <summary>The objective.</summary>
    public MdtDistObjective Objective { get; }

    /// <summary>The settings.</summary>
    public MdtDistillerOptions Options { get; }

    /// <summary>The EMA rates.</summary>
    public IReadOnlyList<double> EmaRates => Options.EmaRates;

    /// <summary>
    /// Runs one optimisation step on <paramref name="batch"/> (split into <see cref="TrainingOptions.BatchSplit"/>
    /// micro-batches, draws from <see cref="FlowTrainer.Generator"/>) and returns its report.
    /// </summary>
    public DistillationProgress TrainStep(DistillationBatch batch) => ToReport(Core.RunStep(Core.Split(batch), Compute(null), 0));

    /// <summary>
    /// Runs one optimisation step on the given micro-batches — the same update as <see cref="Train"/> — with the
    /// objective's random inputs of micro-batch k taken from <paramref name="draws"/>[k] (ε, the raw times, ε') instead
    /// of the generator (which is then left untouched). Use it to reproduce or debug a run, or to replay a reference's
    /// pinned draws.
    /// </summary>
    /// <param name="microBatches">The K micro-batches of the step (each one's loss is divided by K).</param>
    /// <param name="draws">One set of draws per micro-batch, or null to draw from <see cref="FlowTrainer.Generator"/>.</param>
    /// <exception cref="ArgumentException">The counts differ, or a draw does not fit its micro-batch.</exception>
    public DistillationProgress TrainStep(IReadOnlyList<DistillationBatch> microBatches, IReadOnlyList<MdtDistDraws>? draws = null)
    {
        RequireDrawsPerMicroBatch(microBatches, draws);
        return ToReport(Core.RunStep(microBatches, Compute(draws), 0));
    }

    /// <summary>
    /// Trains until <see cref="FlowTrainer.Step"/> reaches <paramref name="totalSteps"/>, drawing the batch of step s from
    /// <paramref name="data"/>. Writes checkpoints as configured. On cancellation a checkpoint is written (when a
    /// checkpoint folder is configured) and <see cref="OperationCanceledException"/> is thrown; resuming from it
    /// continues the run exactly.
    /// </summary>
    /// <returns>The report of the last step, or null if no step was run.</returns>
    public DistillationProgress? Train(IDistillationDataSource data, long totalSteps, IProgress<DistillationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var last = Core.Train(data, totalSteps, Compute(null), progress is null ? null : p => progress.Report(ToReport(p)), cancellationToken);
        return last is null ? null : ToReport(last);
    }

    private Func<int, DistillationBatch, ObjectiveResult> Compute(IReadOnlyList<MdtDistDraws>? draws) => (k, mb) =>
    {
        var terms = draws is null
            ? Objective.Compute(Student, Teacher, mb.X0, mb.Condition, Core.Generator, mb.NegativeCondition)
            : Objective.Compute(Student, Teacher, mb.X0, mb.Condition, draws[k], mb.NegativeCondition);
        var parts = new List<(string, Tensor)>(2);
        if (terms.LossVm is { } vm) parts.Add(("vm", vm));
        if (terms.LossVd is { } vd) parts.Add(("vd", vd));
        return new ObjectiveResult(terms.Loss, terms.PerSample, terms.T, parts);
    };

    private static DistillationProgress ToReport(TrainingProgress p) =>
        new(p.Step, p.TotalSteps, p.Loss, p.LossTerms.TryGetValue("vm", out var vm) ? vm : null, p.LossTerms.TryGetValue("vd", out var vd) ? vd : null,
            p.GradNorm, p.ClipMaxNorm, p.Skipped, p.SkippedSteps, p.TimeBinLoss, p.Elapsed) { LogLossScale = p.LogLossScale };
}
