using MdtDist.Core.Training.Parallel;

namespace MdtDist.Core.Training;

/// <summary>Where the optimizer's weights live.</summary>
public enum TrainingPrecision
{
    /// <summary>The optimizer updates the student's own parameters, in their dtype.</summary>
    Native,

    /// <summary>
    /// TRELLIS's <c>fp16_mode = "inflat_all"</c>: the student's parameters may be float16/bfloat16 (the network
    /// decides which parts compute in low precision); the optimizer, the gradient clipping and the EMA work on float32
    /// master copies, gradients are copied to the masters after backward and the masters are cast back to the
    /// student after each update. Masters are float32, or float64 for float64 parameters (never narrower than the
    /// parameter). When any parameter is float16 (or <see cref="LossScaling.Dynamic"/> is set) the loss is scaled by 2^s with TRELLIS's dynamic rule
    /// (s starts at 20, +growth after a good step, −1 after a step with non-finite gradients, which is skipped).
    /// </summary>
    Fp32MasterWeights,
}

/// <summary>When the loss is multiplied by a dynamic scale 2^s before backward (TRELLIS's <c>fp16_mode = "inflat_all"</c> rule).</summary>
public enum LossScaling
{
    /// <summary>Only when <see cref="TrainingPrecision.Fp32MasterWeights"/> is used and a trained parameter is float16.</summary>
    Auto,

    /// <summary>
    /// Always, whatever the dtype: s starts at <see cref="TrainingOptions.InitialLogLossScale"/>, grows by
    /// <see cref="TrainingOptions.LossScaleGrowth"/> after a good step and drops by 1 after a skipped one; gradients
    /// are divided by 2^s before clipping and the optimizer (exact: a power of two). This is TRELLIS's rule; in float32
    /// or float64 it changes nothing but rounding, and it lets a float64 run reproduce TRELLIS's update bit for bit.
    /// </summary>
    Dynamic,

    /// <summary>Never.</summary>
    None,
}

/// <summary>Settings of TRELLIS's adaptive gradient clipping (see <see cref="AdaptiveGradClipper"/>).</summary>
/// <param name="MaxNorm">Upper bound of the clipping norm (null: none until the buffer is full).</param>
/// <param name="Percentile">Percentile of recent norms used as the bound.</param>
/// <param name="BufferSize">Number of recent norms kept.</param>
public sealed record GradientClipping(double? MaxNorm = 1.0, double Percentile = 95.0, int BufferSize = 1000);

/// <summary>
/// Settings shared by every trainer built on the common training loop (<see cref="MdtDistiller"/>,
/// <see cref="FlowMatchingTrainer"/>); defaults follow MDT-dist's released configs where they exist.
/// </summary>
public abstract record TrainingOptions
{
    /// <summary>AdamW learning rate (MDT-dist: 4e-8 for the SS stage, 1e-8 for SLat — tiny because the student starts at the teacher).</summary>
    public double LearningRate { get; init; } = 1e-4;

    /// <summary>
    /// Optional learning-rate schedule: the factor applied to <see cref="LearningRate"/> at (0-based) step s. It must
    /// be a pure function of the step, so that a resumed run uses the same rates. Null: constant.
    /// </summary>
    public Func<long, double>? LearningRateSchedule { get; init; }

    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.999;

    /// <summary>AdamW ε.</summary>
    public double Epsilon { get; init; } = 1e-8;

    /// <summary>AdamW weight decay (MDT-dist: 0).</summary>
    public double WeightDecay { get; init; }

    /// <summary>EMA rates of the student (one EMA copy per rate; MDT-dist: 0.9999). Empty: no EMA.</summary>
    public IReadOnlyList<double> EmaRates { get; init; } = new[] { 0.9999 };

    /// <summary>Adaptive gradient clipping (MDT-dist: max norm 1, 95th percentile, 1000 norms); null disables clipping.</summary>
    public GradientClipping? Clipping { get; init; } = new();

    /// <summary>Number of micro-batches per step (gradient accumulation; MDT-dist: 2). Each micro-batch's loss is divided by this.</summary>
    public int BatchSplit { get; init; } = 1;

    /// <summary>Splits a batch into micro-batches for layouts <see cref="DistillationBatch.Split"/> cannot handle.</summary>
    public Func<DistillationBatch, int, IReadOnlyList<DistillationBatch>>? BatchSplitter { get; init; }

    /// <summary>Where the optimizer's weights live.</summary>
    public TrainingPrecision Precision { get; init; } = TrainingPrecision.Native;

    /// <summary>When the dynamic loss scale is used (TRELLIS's <c>inflat_all</c> rule; see <see cref="LossScaling"/>).</summary>
    public LossScaling LossScaling { get; init; } = LossScaling.Auto;

    /// <summary>Growth of log2 of the loss scale per good step (TRELLIS <c>fp16_scale_growth</c> 1e-3).</summary>
    public double LossScaleGrowth { get; init; } = 1e-3;

    /// <summary>Initial log2 of the loss scale (TRELLIS 20).</summary>
    public double InitialLogLossScale { get; init; } = 20.0;

    /// <summary>
    /// Whether the EMA copies are updated after a skipped (non-finite) step too. TRELLIS does (default true): its
    /// <c>update_ema</c> runs after every <c>run_step</c>, so the EMA moves toward the unchanged weights. False keeps
    /// the EMA untouched on a skipped step.
    /// </summary>
    public bool EmaOnSkippedStep { get; init; } = true;

    /// <summary>Seed of the trainer's random generator (noise, time and dropout draws). With a communicator, rank r uses seed + r.</summary>
    public long Seed { get; init; }

    /// <summary>Folder for checkpoints; null: none are written automatically.</summary>
    public string? CheckpointDirectory { get; init; }

    /// <summary>Write a checkpoint every this many steps (0: only at the end and on cancellation).</summary>
    public long CheckpointEvery { get; init; }

    /// <summary>Number of most recent checkpoints kept (older ones are deleted after a successful write).</summary>
    public int KeepCheckpoints { get; init; } = 3;

    /// <summary>Log a summary (losses, gradient norm, time-binned losses) every this many steps (0: never).</summary>
    public int LogEvery { get; init; } = 100;

    /// <summary>
    /// Data-parallel training: the processes of one run, each with its own batch shard (null: a single process).
    /// Parameters and optimizer state are broadcast from rank 0 at start and resume, gradients are averaged after
    /// backward (bucketed, in the training dtype, before unscaling and clipping), and only rank 0 writes checkpoints.
    /// </summary>
    public ITrainingCommunicator? Communicator { get; init; }

    /// <summary>Largest gradient bucket of one all-reduce call, in bytes (torch DDP's default: 25 MiB).</summary>
    public long AllReduceBucketBytes { get; init; } = 25L << 20;

    /// <summary>
    /// A scope opened around each micro-batch's forward and backward (null: none), e.g. <see cref="MemoryController.Record"/>
    /// of TRELLIS's elastic memory controller.
    /// </summary>
    public Func<IDisposable>? MicroBatchScope { get; init; }
}

/// <summary>Settings of <see cref="MdtDistiller"/> (all of them shared with the other trainers; see <see cref="TrainingOptions"/>).</summary>
public sealed record MdtDistillerOptions : TrainingOptions;


/// <summary>The report of one training step.</summary>
/// <param name="Step">Steps completed, this one included.</param>
/// <param name="TotalSteps">The step count the run goes to (0 for a single <c>TrainStep</c>).</param>
/// <param name="Loss">Total loss of the step (mean over micro-batches; NaN or ∞ when the loss itself was not finite).</param>
/// <param name="LossVm">The VM term, or null when disabled.</param>
/// <param name="LossVd">The VD term, or null when disabled.</param>
/// <param name="GradNorm">Total gradient norm before clipping, or null (no clipping or skipped).</param>
/// <param name="ClipMaxNorm">The clipping bound in force after the step, or null.</param>
/// <param name="Skipped">Whether the update was skipped (non-finite loss or gradient).</param>
/// <param name="SkippedSteps">Skipped steps so far.</param>
/// <param name="TimeBinLoss">Mean per-sample loss of the step in each non-empty time bin 0…9 (t ∈ [i/10, (i+1)/10)).</param>
/// <param name="Elapsed">Wall time of the step.</param>
public sealed record DistillationProgress(long Step, long TotalSteps, double Loss, double? LossVm, double? LossVd, double? GradNorm,
    double? ClipMaxNorm, bool Skipped, long SkippedSteps, IReadOnlyDictionary<int, double> TimeBinLoss, TimeSpan Elapsed)
{
    /// <summary>log2 of the loss scale after the step (0 when no loss scaling is used).</summary>
    public double LogLossScale { get; init; }
}
