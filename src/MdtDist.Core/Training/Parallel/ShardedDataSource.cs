namespace MdtDist.Core.Training.Parallel;

/// <summary>
/// The batch shard of one rank: the global batch of step s (from <paramref name="global"/>) split into
/// <paramref name="worldSize"/> consecutive parts with <see cref="DistillationBatch.Split"/>, of which rank
/// <paramref name="rank"/> takes its own. The union over ranks is the global batch, so data-parallel training on N
/// ranks sees the same samples as one process on the whole batch.
/// </summary>
public sealed class ShardedDataSource(IDistillationDataSource global, int rank, int worldSize) : IDistillationDataSource
{
    private readonly IDistillationDataSource _global = global ?? throw new ArgumentNullException(nameof(global));
    private readonly int _rank = worldSize >= 1 && rank >= 0 && rank < worldSize ? rank : throw new ArgumentException($"rank {rank} is not in [0, {worldSize}).", nameof(rank));

    /// <summary>Shards <paramref name="global"/> for <paramref name="communicator"/>'s rank.</summary>
    public ShardedDataSource(IDistillationDataSource global, ITrainingCommunicator communicator)
        : this(global, (communicator ?? throw new ArgumentNullException(nameof(communicator))).Rank, communicator.WorldSize) { }

    /// <inheritdoc />
    public DistillationBatch GetBatch(long step)
    {
        var batch = _global.GetBatch(step) ?? throw new InvalidOperationException($"the data source returned no batch for step {step}.");
        return worldSize == 1 ? batch : batch.Split(worldSize)[_rank];
    }
}
