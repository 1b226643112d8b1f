using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>The report of one step of the common training loop (<see cref="FlowMatchingTrainer"/>; <see cref="MdtDistiller"/> reports <see cref="DistillationProgress"/>).</summary>
/// <param name="Step">Steps completed, this one included.</param>
/// <param name="TotalSteps">The step count the run goes to (0 for a single step driven by hand).</param>
/// <param name="Loss">Total loss of the step: mean over micro-batches (and ranks); NaN or ∞ when not finite.</param>
/// <param name="LossTerms">The named parts of the loss (e.g. "vm", "vd"), averaged the same way.</param>
/// <param name="GradNorm">Total gradient norm before clipping, or null (no clipping, or skipped).</param>
/// <param name="ClipMaxNorm">The clipping bound in force after the step, or null.</param>
/// <param name="Skipped">Whether the update was skipped (non-finite loss or gradient).</param>
/// <param name="SkippedSteps">Skipped steps so far.</param>
/// <param name="LogLossScale">log2 of the loss scale after the step (0 when no loss scaling is used).</param>
/// <param name="TimeBinLoss">Mean per-sample loss in each non-empty time bin 0…9 (t ∈ [i/10, (i+1)/10)).</param>
/// <param name="Elapsed">Wall time of the step.</param>
public sealed record TrainingProgress(long Step, long TotalSteps, double Loss, IReadOnlyDictionary<string, double> LossTerms, double? GradNorm,
    double? ClipMaxNorm, bool Skipped, long SkippedSteps, double LogLossScale, IReadOnlyDictionary<int, double> TimeBinLoss, TimeSpan Elapsed);

/// <summary>What an objective returns for one micro-batch.</summary>
/// <param name="Loss">The scalar loss (differentiable; backward is called on it, divided by the micro-batch count).</param>
/// <param name="PerSample">Per-sample loss <c>[B]</c> (detached), for time-binned logging.</param>
/// <param name="T">The training times <c>[B]</c>.</param>
/// <param name="Terms">Named parts of the loss (scalars), logged alongside; may be empty.</param>
internal sealed record ObjectiveResult(Tensor Loss, Tensor PerSample, Tensor T, IReadOnlyList<(string Name, Tensor Value)> Terms);
