using MdtDist.Core.Training;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Which transformer blocks of a sparse network run under <see cref="ActivationCheckpoint"/>: every block when the
/// config says <c>use_checkpoint</c>, and while a <see cref="MemoryController"/> steers a training forward, the first
/// blocks as TRELLIS's <c>SparseTransformerElasticMixin.with_mem_ratio</c> chooses them.
/// </summary>
internal sealed class ElasticBlocks
{
    private readonly int _numBlocks;
    private readonly bool _useCheckpoint;
    private int _elasticCount;

    public ElasticBlocks(long numBlocks, bool useCheckpoint)
    {
        _numBlocks = (int)numBlocks;
        _useCheckpoint = useCheckpoint;
    }

    /// <summary>The controller (null: no elastic memory).</summary>
    public MemoryController? Controller { get; set; }

    /// <summary>
    /// TRELLIS's rule: a ratio of exactly 1 checkpoints nothing; otherwise the first
    /// <c>n = min(ceil((1 − r)·N) + 1, N)</c> of N blocks are checkpointed, and the ratio used is <c>1 − (n − 1)/N</c>.
    /// </summary>
    public static (int Count, double ExactRatio) Plan(double memRatio, int numBlocks)
    {
        if (memRatio == 1.0 || numBlocks == 0) return (0, 1.0);
        int n = Math.Min((int)Math.Ceiling((1 - memRatio) * numBlocks) + 1, numBlocks);
        return (n, 1 - (n - 1) / (double)numBlocks);
    }

    /// <summary>Whether block <paramref name="index"/> is checkpointed in the current forward.</summary>
    public bool Checkpoints(int index) => _useCheckpoint || index < _elasticCount;

    /// <summary>
    /// Runs a forward (<paramref name="body"/>) of <paramref name="owner"/>: with a controller, in training mode and with
    /// gradients enabled, asks for the ratio of <paramref name="inputSize"/> rows, checkpoints the planned blocks and
    /// reports the exact ratio (TRELLIS's <c>ElasticModuleMixin.forward</c>); otherwise just runs it.
    /// </summary>
    public T Run<T>(nn.Module owner, long inputSize, Func<T> body)
    {
        if (Controller is not { } controller || !torch.is_grad_enabled() || !owner.training) return body();
        var (count, exact) = Plan(controller.GetMemRatio(inputSize), _numBlocks);
        _elasticCount = count;
        T result;
        try { result = body(); }
        finally { _elasticCount = 0; }
        controller.UpdateRunStates(inputSize, exact);
        return result;
    }

    /// <summary>A <see cref="SparseTransformerBlock"/> under <see cref="ActivationCheckpoint"/> (on the feature tensor).</summary>
    public static SparseTensor Checkpointed(SparseTransformerBlock block, SparseTensor x)
    {
        var coords = x.Coordinates;
        return x.ReplaceFeats(ActivationCheckpoint.Run(a => block.Forward(new SparseTensor(a[0]!, coords)).Feats,
            new[] { x.Feats }, block.parameters()));
    }

    /// <summary>A <see cref="ModulatedSparseTransformerCrossBlock"/> under <see cref="ActivationCheckpoint"/>
    /// (on the features, the modulation input and the condition).</summary>
    public static SparseTensor Checkpointed(ModulatedSparseTransformerCrossBlock block, SparseTensor x, Tensor mod, Tensor context)
    {
        var coords = x.Coordinates;
        return x.ReplaceFeats(ActivationCheckpoint.Run(a => block.Forward(new SparseTensor(a[0]!, coords), a[1]!, a[2]!).Feats,
            new[] { x.Feats, mod, context }, block.parameters()));
    }
}
