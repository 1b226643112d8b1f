using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>One training batch: clean latents x0 and their conditions.</summary>
public sealed class DistillationBatch
{
    /// <summary>Creates a batch.</summary>
    /// <param name="x0">Clean latents (dense or rows).</param>
    /// <param name="condition">Condition tokens with batch size B (or 1, shared), or null.</param>
    /// <param name="negativeCondition">The teacher's unconditional input (zeros like the condition when null).</param>
    public DistillationBatch(Latent x0, Tensor? condition = null, Tensor? negativeCondition = null)
    {
        X0 = x0 ?? throw new ArgumentNullException(nameof(x0));
        Condition = condition;
        NegativeCondition = negativeCondition;
    }

    /// <summary>Clean latents.</summary>
    public Latent X0 { get; }

    /// <summary>Condition, or null.</summary>
    public Tensor? Condition { get; }

    /// <summary>Negative condition for the teacher's guidance, or null (zeros).</summary>
    public Tensor? NegativeCondition { get; }

    /// <summary>Number of samples.</summary>
    public long BatchSize => X0.BatchSize;

    /// <summary>
    /// Splits the batch into <paramref name="parts"/> consecutive groups of samples (gradient accumulation). Supports
    /// <see cref="DenseLayout"/> and plain <see cref="RowLayout"/> latents; for other layouts supply
    /// <see cref="TrainingOptions.BatchSplitter"/>. Conditions with batch size B are split alongside; a condition
    /// with batch size 1 is shared.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="parts"/> is not in [1, B].</exception>
    /// <exception cref="NotSupportedException">The layout cannot be split generically.</exception>
    public IReadOnlyList<DistillationBatch> Split(int parts)
    {
        long b = BatchSize;
        if (parts < 1 || parts > b) throw new ArgumentException($"cannot split a batch of {b} samples into {parts} parts.", nameof(parts));
        if (parts == 1) return new[] { this };
        var result = new List<DistillationBatch>(parts);
        long start = 0;
        for (int i = 0; i < parts; i++)
        {
            long size = b / parts + (i < b % parts ? 1 : 0);
            result.Add(new DistillationBatch(SliceLatent(X0, start, size), SliceCondition(Condition, start, size), SliceCondition(NegativeCondition, start, size)));
            start += size;
        }
        return result;
    }

    private Tensor? SliceCondition(Tensor? c, long start, long size)
    {
        if (c is null) return null;
        if (c.dim() >= 1 && c.shape[0] == BatchSize && BatchSize > 1) return c.narrow(0, start, size);
        return c;
    }

    private static Latent SliceLatent(Latent x, long start, long size)
    {
        switch (x.Layout)
        {
            case DenseLayout:
                return Latent.Dense(x.Data.narrow(0, start, size));
            case RowLayout rows when rows.GetType() == typeof(RowLayout):
                var idx = rows.SampleIndex;
                var mask = idx.ge(start).logical_and(idx.lt(start + size));
                var sel = mask.nonzero().squeeze(1).to(x.Data.device);
                var newIndex = idx.index_select(0, sel.to(idx.device)) - start;
                return new Latent(x.Data.index_select(0, sel), new RowLayout(newIndex, size));
            default:
                throw new NotSupportedException($"batches with layout {x.Layout.GetType().Name} cannot be split generically; set TrainingOptions.BatchSplitter.");
        }
    }
}

/// <summary>
/// Supplies the training batches. For exact resume the batch of a step must depend only on the step number
/// (e.g. a seeded shuffle of epoch and position), never on how many batches were requested before.
/// </summary>
public interface IDistillationDataSource
{
    /// <summary>The batch of training step <paramref name="step"/> (0-based).</summary>
    DistillationBatch GetBatch(long step);
}

/// <summary>An <see cref="IDistillationDataSource"/> from a delegate.</summary>
public sealed class DelegateDataSource : IDistillationDataSource
{
    private readonly Func<long, DistillationBatch> _f;

    /// <summary>Wraps <paramref name="getBatch"/>.</summary>
    public DelegateDataSource(Func<long, DistillationBatch> getBatch) => _f = getBatch ?? throw new ArgumentNullException(nameof(getBatch));

    /// <inheritdoc />
    public DistillationBatch GetBatch(long step) => _f(step);
}
