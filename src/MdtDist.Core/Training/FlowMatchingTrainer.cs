using MdtDist.Core.Flow;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>Settings of <see cref="FlowMatchingTrainer"/>: the common training settings plus TRELLIS's flow-matching recipe.</summary>
public sealed record FlowMatchingTrainerOptions : TrainingOptions
{
    /// <summary>
    /// The training-time distribution (TRELLIS's <c>t_schedule</c>; its teacher configs use logit-normal(1, 1), the
    /// default).
    /// </summary>
    public TimeSampler TimeSampler { get; init; } = new LogitNormalTimeSampler(1.0, 1.0);

    /// <summary>
    /// Condition dropout (TRELLIS's <c>p_uncond</c>, 0.1 in its image-conditioned teacher configs): each sample's
    /// condition is replaced by the negative condition (zeros unless the batch gives one) with this probability, so the
    /// model also learns the unconditional velocity classifier-free guidance needs. Ignored for unconditional batches.
    /// </summary>
    public double PUncond { get; init; } = 0.1;

    /// <summary>The flow path (TRELLIS's, σ_min = 1e-5, when null).</summary>
    public RectifiedFlowPath? Path { get; init; }
}

/// <summary>
/// The random inputs of one flow-matching evaluation, drawn in this order: ε = randn_like(x0), the time sampler's
/// raw draw <c>[B]</c>, then (when the condition can be dropped) u ~ U(0, 1) <c>[B]</c>; sample i's condition is
/// dropped when u[i] &lt; <see cref="FlowMatchingTrainerOptions.PUncond"/>.
/// </summary>
/// <param name="Noise">ε, shaped like x0.</param>
/// <param name="TRaw">The raw time draw (mapped by the time sampler).</param>
/// <param name="DropUniform">The dropout draws, or null (no dropout).</param>
public sealed record FlowMatchingDraws(Tensor Noise, Tensor TRaw, Tensor? DropUniform);

/// <summary>
/// Trains a flow model from data with TRELLIS's teacher recipe (<c>FlowMatchingTrainer</c> +
/// <c>ClassifierFreeGuidanceMixin</c>): per micro-batch, t from the time sampler, x_t on the rectified-flow path,
/// the condition of each sample dropped to the negative condition with probability p_uncond, and the loss
/// E‖v(x_t, t | c) − ((1 − σ)ε − x0)‖² (<see cref="FlowMatchingLoss"/>). The update — accumulation, loss scaling,
/// master weights, adaptive clipping, AdamW, EMA, non-finite step skipping, checkpoints, exact resume, logging and
/// data-parallel training — is the same training loop as <see cref="MdtDistiller"/>'s.
/// </summary>
public sealed class FlowMatchingTrainer : FlowTrainer
{
    private readonly FlowMatchingLoss _loss;

    /// <summary>Creates a trainer for <paramref name="model"/> (its trainable parameters are optimised).</summary>
    /// <exception cref="ArgumentException">An option is out of range or the model has no trainable parameters.</exception>
    public FlowMatchingTrainer(IFlowNetwork model, FlowMatchingTrainerOptions? options = null, ILogger? logger = null)
        : base(model ?? throw new ArgumentNullException(nameof(model)), Checked(options ??= new FlowMatchingTrainerOptions()), logger, "model")
    {
        Model = model;
        Options = options;
        _loss = new FlowMatchingLoss(Options.Path);
    }

    private static FlowMatchingTrainerOptions Checked(FlowMatchingTrainerOptions options)
    {
        TrainerCore.Validate(options);
        if (options.TimeSampler is null) throw new ArgumentException("TimeSampler must not be null.", nameof(options));
        if (!(options.PUncond >= 0 && options.PUncond <= 1)) throw new ArgumentException($"PUncond must be in [0, 1], got {options.PUncond}.", nameof(options));
        return options;
    }

    /// <summary>The model being trained.</summary>
    public IFlowNetwork Model { get; }

    /// <summary>The settings.</summary>
    public FlowMatchingTrainerOptions Options { get; }

    /// <summary>Draws ε, the raw times and (when <see cref="FlowMatchingTrainerOptions.PUncond"/> &gt; 0 and there is a condition) the dropout uniforms.</summary>
    public FlowMatchingDraws Draw(DistillationBatch microBatch, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(microBatch);
        var d = microBatch.X0.Data;
        var noise = torch.randn(d.shape, dtype: d.dtype, device: d.device, generator: generator);
        var raw = Options.TimeSampler.DrawRaw(microBatch.BatchSize, d.dtype, d.device, generator);
        var drop = Options.PUncond > 0 && microBatch.Condition is not null
            ? torch.rand(new[] { microBatch.BatchSize }, dtype: ScalarType.Float64, generator: generator)
            : null;
        return new FlowMatchingDraws(noise, raw, drop);
    }

    /// <summary>
    /// The condition the model sees: sample i's row of <paramref name="condition"/> replaced by the negative
    /// condition's (zeros when null) where <paramref name="drop"/>[i] is true. A condition with batch size 1 is
    /// repeated to the batch first. Returns the condition itself when nothing is dropped.
    /// </summary>
    /// <exception cref="ArgumentException">A shape does not fit the batch.</exception>
    internal static Tensor DropCondition(Tensor condition, Tensor? negativeCondition, Tensor drop)
    {
        ArgumentNullException.ThrowIfNull(condition);
        ArgumentNullException.ThrowIfNull(drop);
        long b = drop.shape[0];
        if (drop.dim() != 1) throw new ArgumentException($"drop must have shape [B], found [{string.Join(", ", drop.shape)}].", nameof(drop));
        var c = condition;
        if (c.dim() < 1 || (c.shape[0] != b && c.shape[0] != 1))
            throw new ArgumentException($"condition has batch size {(c.dim() < 1 ? 0 : c.shape[0])}, expected {b} or 1.", nameof(condition));
        if (c.shape[0] == 1 && b > 1) c = c.expand(new[] { b }.Concat(c.shape.Skip(1)).ToArray());
        var neg = negativeCondition ?? torch.zeros_like(c);
        if (neg.shape[0] == 1 && b > 1) neg = neg.expand(c.shape);
        if (!neg.shape.SequenceEqual(c.shape))
            throw new ArgumentException($"negativeCondition has shape [{string.Join(", ", neg.shape)}], expected [{string.Join(", ", c.shape)}].", nameof(negativeCondition));
        var mask = drop.to(ScalarType.Bool, c.device).reshape(new[] { b }.Concat(Enumerable.Repeat(1L, (int)c.dim() - 1)).ToArray());
        return torch.where(mask, neg.to(c.dtype), c);
    }

    /// <summary>Evaluates the loss on one micro-batch with the given draws (the trainer's objective).</summary>
    public FlowMatchingTerms Loss(DistillationBatch microBatch, FlowMatchingDraws draws)
    {
        ArgumentNullException.ThrowIfNull(microBatch);
        ArgumentNullException.ThrowIfNull(draws);
        var x0 = microBatch.X0;
        if (draws.TRaw.dim() != 1 || draws.TRaw.shape[0] != x0.BatchSize)
            throw new ArgumentException($"draws.TRaw must have shape [{x0.BatchSize}], found [{string.Join(", ", draws.TRaw.shape)}].", nameof(draws));
        var t = Options.TimeSampler.FromRaw(draws.TRaw).to(x0.Data.dtype, x0.Data.device);
        var cond = microBatch.Condition;
        if (cond is not null && draws.DropUniform is { } u && Options.PUncond > 0)
        {
            if (u.dim() != 1 || u.shape[0] != x0.BatchSize)
                throw new ArgumentException($"draws.DropUniform must have shape [{x0.BatchSize}], found [{string.Join(", ", u.shape)}].", nameof(draws));
            cond = DropCondition(cond, microBatch.NegativeCondition, u.lt(Options.PUncond));
        }
        return _loss.Compute(Model, x0, cond, t, draws.Noise);
    }

    /// <summary>Runs one optimisation step on <paramref name="batch"/> (split into <see cref="TrainingOptions.BatchSplit"/> micro-batches).</summary>
    public TrainingProgress TrainStep(DistillationBatch batch) => Core.RunStep(Core.Split(batch), Compute(null), 0);

    /// <summary>
    /// Runs one optimisation step on the given micro-batches — the same update as <see cref="Train"/> — with micro-batch
    /// k's random inputs taken from <paramref name="draws"/>[k] (or from <see cref="FlowTrainer.Generator"/> when null).
    /// </summary>
    /// <exception cref="ArgumentException">The counts differ, or a draw does not fit its micro-batch.</exception>
    public TrainingProgress TrainStep(IReadOnlyList<DistillationBatch> microBatches, IReadOnlyList<FlowMatchingDraws>? draws = null)
    {
        RequireDrawsPerMicroBatch(microBatches, draws);
        return Core.RunStep(microBatches, Compute(draws), 0);
    }

    /// <summary>
    /// Trains until <see cref="FlowTrainer.Step"/> reaches <paramref name="totalSteps"/>, drawing the batch of step s from
    /// <paramref name="data"/>; checkpoints, cancellation and resume behave as in <see cref="MdtDistiller.Train"/>.
    /// </summary>
    /// <returns>The report of the last step, or null if no step was run.</returns>
    public TrainingProgress? Train(IDistillationDataSource data, long totalSteps, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Core.Train(data, totalSteps, Compute(null), progress is null ? null : progress.Report, cancellationToken);

    private Func<int, DistillationBatch, ObjectiveResult> Compute(IReadOnlyList<FlowMatchingDraws>? draws) => (k, mb) =>
    {
        var terms = Loss(mb, draws?[k] ?? Draw(mb, Core.Generator));
        return new ObjectiveResult(terms.Loss, terms.PerSample, terms.T, new[] { ("mse", terms.Loss) });
    };
}
