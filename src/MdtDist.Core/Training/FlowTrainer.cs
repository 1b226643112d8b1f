using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// What every trainer of a flow network shares (TRELLIS's <c>BasicTrainer</c>): the update loop — accumulation, loss
/// scaling, master weights, adaptive clipping, AdamW, EMA, non-finite step skipping, data-parallel averaging — and its
/// state, checkpoints and resume. <see cref="MdtDistiller"/> and <see cref="FlowMatchingTrainer"/> add their objective.
/// </summary>
public abstract class FlowTrainer : IDisposable
{
    private protected FlowTrainer(IFlowNetwork network, TrainingOptions options, ILogger? logger, string what)
    {
        Core = new TrainerCore(network, options, logger ?? NullLogger.Instance, what);
    }

    private protected TrainerCore Core { get; }

    /// <summary>The gradient clipper, or null.</summary>
    public AdaptiveGradClipper? GradClipper => Core.GradClipper;

    /// <summary>Completed steps (skipped ones included).</summary>
    public long Step => Core.Step;

    /// <summary>Steps whose update was skipped because the loss or a gradient was not finite.</summary>
    public long SkippedSteps => Core.SkippedSteps;

    /// <summary>log2 of the current loss scale (0 unless loss scaling is in use; see <see cref="LossScaling"/>).</summary>
    public double LogLossScale => Core.LogLossScale;

    /// <summary>The optimizer's weights (the trained network's parameters, or their master copies), in parameter order.</summary>
    public IReadOnlyList<Parameter> MasterParameters => Core.MasterParameters;

    /// <summary>The trainer's random generator (all draws of the objective; its state is checkpointed).</summary>
    public Generator Generator => Core.Generator;

    /// <summary>The learning rate of the next step.</summary>
    public double CurrentLearningRate => Core.CurrentLearningRate;

    /// <summary>Seconds spent averaging gradients over ranks so far (0 in a single process).</summary>
    public double AllReduceSeconds => Core.AllReduceSeconds;

    /// <summary>
    /// The EMA weights of rate <see cref="TrainingOptions.EmaRates"/>[<paramref name="index"/>] by parameter name (live
    /// tensors: read, do not modify).
    /// </summary>
    public IReadOnlyDictionary<string, Tensor> EmaParameters(int index = 0) => Core.EmaParameters(index);

    /// <summary>Loads the EMA weights of rate index <paramref name="index"/> (and the trained network's buffers) into <paramref name="target"/>, a module of the same architecture.</summary>
    public void CopyEmaTo(nn.Module target, int index = 0) => Core.CopyEmaTo(target, index);

    /// <summary>
    /// Writes a checkpoint of everything a resume needs (the trained network as <c>student.safetensors</c>, master
    /// weights, EMA copies, AdamW state, clipper statistics, generator state, loss scale, step counters) as the folder
    /// <c>step-NNNNNNNNN</c> under <paramref name="directory"/>. The files are written into a hidden temporary folder, a
    /// manifest with their sizes and SHA-256 hashes is written last, and the folder is then renamed into place, so a
    /// crash at any point leaves every earlier checkpoint intact and never exposes a partial one. Older checkpoints
    /// beyond <see cref="TrainingOptions.KeepCheckpoints"/> are deleted afterwards. In data-parallel runs this is a
    /// collective: every rank calls it, only rank 0 writes.
    /// </summary>
    /// <returns>The checkpoint folder.</returns>
    public string SaveCheckpoint(string directory) => Core.SaveCheckpoint(directory);

    /// <summary>Restores the state saved by <see cref="SaveCheckpoint"/> from the checkpoint folder <paramref name="checkpoint"/>.</summary>
    /// <exception cref="InvalidDataException">The checkpoint is incomplete, corrupt, or from an incompatible configuration (including another world size).</exception>
    public void LoadCheckpoint(string checkpoint) => Core.LoadCheckpoint(checkpoint);

    /// <summary>Loads the newest complete checkpoint under <paramref name="directory"/> (the configured folder when null). Returns false if there is none.</summary>
    public bool TryResume(string? directory = null) => Core.TryResume(directory);

    /// <summary>Test hook: called after each checkpoint file is written (before the manifest); throwing simulates a crash.</summary>
    internal Action<string>? CheckpointFileWritten { get => Core.CheckpointFileWritten; set => Core.CheckpointFileWritten = value; }

    /// <summary>Checks that a step given explicit draws has one set per micro-batch.</summary>
    /// <exception cref="ArgumentException">The counts differ.</exception>
    private protected static void RequireDrawsPerMicroBatch<TDraws>(IReadOnlyList<DistillationBatch> microBatches, IReadOnlyList<TDraws>? draws)
    {
        ArgumentNullException.ThrowIfNull(microBatches);
        if (draws is not null && draws.Count != microBatches.Count)
            throw new ArgumentException($"{draws.Count} sets of draws for {microBatches.Count} micro-batches.", nameof(draws));
    }

    /// <summary>Releases the optimizer, EMA copies, master weights and the generator (not the networks).</summary>
    public void Dispose()
    {
        Core.Dispose();
        GC.SuppressFinalize(this);
    }
}
