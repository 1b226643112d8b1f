using static TorchSharp.torch;

namespace MdtDist.Core.Training.Parallel;

/// <summary>
/// The collective operations data-parallel training needs, over the processes ("ranks") of one run. The trainers
/// call them in the same order on every rank; an implementation must fail (throw) rather than hang when a peer is
/// gone. Core ships no implementation: <c>MdtDist.Distributed</c> provides one over MPI (host memory); a GPU backend
/// (CUDA-aware MPI, NCCL) implements the same interface on device tensors.
/// </summary>
public interface ITrainingCommunicator
{
    /// <summary>This process's rank in [0, <see cref="WorldSize"/>).</summary>
    int Rank { get; }

    /// <summary>Number of processes.</summary>
    int WorldSize { get; }

    /// <summary>Replaces <paramref name="buffer"/> (contiguous, any floating dtype) by its elementwise sum over all ranks.</summary>
    void AllReduceSum(Tensor buffer);

    /// <summary>Replaces <paramref name="values"/> by their elementwise sum over all ranks.</summary>
    void AllReduceSum(double[] values);

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="buffer"/> (contiguous) into every rank's.</summary>
    void Broadcast(Tensor buffer, int root = 0);

    /// <summary>Copies rank <paramref name="root"/>'s bytes to every rank and returns them (the argument is ignored on other ranks).</summary>
    byte[] Broadcast(byte[]? bytes, int root = 0);

    /// <summary>Waits until every rank has arrived.</summary>
    void Barrier();
}
