using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// How the rows/elements of a latent tensor belong to the samples of a batch. Every loss and sampler is written
/// once against this abstraction, so dense latents <c>[B, ...]</c> and sparse latents (rows of features, each with
/// a sample index, as TRELLIS's structured latent) share one implementation of every formula.
/// </summary>
public abstract class LatentLayout
{
    /// <summary>Number of samples in the batch.</summary>
    public abstract long BatchSize { get; }

    /// <summary>
    /// Broadcasts a per-sample value <paramref name="perSample"/> (<c>[B]</c>) to a tensor that broadcasts
    /// against latent data of this layout (e.g. <c>[B,1,1,1,1]</c> for dense, <c>[N,1]</c> for rows).
    /// </summary>
    public abstract Tensor Broadcast(Tensor perSample, Tensor data);

    /// <summary>Sums every element of each sample: returns <c>[B]</c>.</summary>
    public abstract Tensor SumPerSample(Tensor data);

    /// <summary>Number of elements that belong to each sample: returns <c>[B]</c> in the dtype of <paramref name="data"/>.</summary>
    public abstract Tensor CountPerSample(Tensor data);

    /// <summary>Checks that <paramref name="data"/> is laid out as this layout expects.</summary>
    /// <exception cref="ArgumentException">The shape does not match.</exception>
    public abstract void Validate(Tensor data, string argumentName);

    /// <summary>The L2 norm of each sample over all of its elements: <c>[B]</c>.</summary>
    public Tensor NormPerSample(Tensor data) => SumPerSample(data * data).sqrt();

    /// <summary>The mean of each sample over all of its elements: <c>[B]</c>.</summary>
    public Tensor MeanPerSample(Tensor data) => SumPerSample(data) / CountPerSample(data);

    /// <summary>
    /// The layout of <paramref name="copies"/> copies of a latent of this layout concatenated along axis 0
    /// (see <see cref="Latent.RepeatBatch"/>): copy k holds samples <c>[k·B, (k+1)·B)</c>.
    /// </summary>
    /// <exception cref="NotSupportedException">The layout cannot be repeated (a layout class that does not override this).</exception>
    public virtual LatentLayout RepeatBatch(int copies) =>
        throw new NotSupportedException($"latents with layout {GetType().Name} cannot be repeated along the batch.");

    private protected static void CheckCopies(int copies)
    {
        if (copies < 1) throw new ArgumentException($"copies must be >= 1, got {copies}.", nameof(copies));
    }
}

/// <summary>A dense latent <c>[B, ...]</c>: the first axis is the sample.</summary>
public sealed class DenseLayout : LatentLayout
{
    /// <summary>The shared instance for batch size <paramref name="batchSize"/>.</summary>
    public DenseLayout(long batchSize)
    {
        if (batchSize < 1) throw new ArgumentException($"batch size must be >= 1, got {batchSize}.", nameof(batchSize));
        BatchSize = batchSize;
    }

    /// <inheritdoc />
    public override long BatchSize { get; }

    /// <inheritdoc />
    public override LatentLayout RepeatBatch(int copies)
    {
        CheckCopies(copies);
        return new DenseLayout(BatchSize * copies);
    }

    /// <inheritdoc />
    public override Tensor Broadcast(Tensor perSample, Tensor data)
    {
        var shape = new long[data.dim()];
        Array.Fill(shape, 1L);
        shape[0] = BatchSize;
        return perSample.to(data.dtype, data.device).reshape(shape);
    }

    /// <inheritdoc />
    public override Tensor SumPerSample(Tensor data) => data.reshape(BatchSize, -1).sum(1);

    /// <inheritdoc />
    public override Tensor CountPerSample(Tensor data) =>
        torch.full(new[] { BatchSize }, data.numel() / BatchSize, dtype: data.dtype, device: data.device);

    /// <inheritdoc />
    public override void Validate(Tensor data, string argumentName)
    {
        if (data.dim() < 1 || data.shape[0] != BatchSize)
            throw new ArgumentException($"{argumentName}: expected a dense latent with batch size {BatchSize} on axis 0, found shape [{string.Join(", ", data.shape)}].", argumentName);
    }
}

/// <summary>
/// A row latent <c>[N, C]</c> whose rows carry a sample index (TRELLIS's sparse structured latent).
/// Per-sample reductions run over all rows × channels of a sample.
/// </summary>
public class RowLayout : LatentLayout
{
    /// <summary>Creates a layout from the sample index of every row (<c>[N]</c>, int64, values in [0, B)).</summary>
    public RowLayout(Tensor sampleIndex, long batchSize)
    {
        if (batchSize < 1) throw new ArgumentException($"batch size must be >= 1, got {batchSize}.", nameof(batchSize));
        if (sampleIndex.dim() != 1) throw new ArgumentException($"sampleIndex must be 1-D, found shape [{string.Join(", ", sampleIndex.shape)}].", nameof(sampleIndex));
        SampleIndex = sampleIndex.to(ScalarType.Int64).DetachFromDisposeScope();
        BatchSize = batchSize;
        using var counts = torch.bincount(SampleIndex, minlength: batchSize);
        if (counts.shape[0] != batchSize)
            throw new ArgumentException($"sampleIndex has values >= batch size {batchSize}.", nameof(sampleIndex));
        RowCounts = counts.data<long>().ToArray();
    }

    /// <summary>The sample index of each row, <c>[N]</c> int64.</summary>
    public Tensor SampleIndex { get; }

    /// <summary>Rows per sample.</summary>
    public IReadOnlyList<long> RowCounts { get; }

    /// <summary>Total number of rows.</summary>
    public long RowCount => SampleIndex.shape[0];

    /// <inheritdoc />
    public override long BatchSize { get; }

    /// <inheritdoc />
    /// <remarks>The rows of copy k carry sample index <c>b + k·B</c>.</remarks>
    public override LatentLayout RepeatBatch(int copies)
    {
        CheckCopies(copies);
        using var scope = torch.NewDisposeScope();
        var idx = torch.cat(Enumerable.Range(0, copies).Select(k => SampleIndex + k * BatchSize).ToArray(), 0);
        return new RowLayout(idx, BatchSize * copies);
    }

    /// <inheritdoc />
    public override Tensor Broadcast(Tensor perSample, Tensor data)
    {
        var idx = SampleIndex.device == data.device ? SampleIndex : SampleIndex.to(data.device);
        var rows = perSample.to(data.dtype, data.device).index_select(0, idx);
        var shape = new long[data.dim()];
        Array.Fill(shape, 1L);
        shape[0] = RowCount;
        return rows.reshape(shape);
    }

    /// <inheritdoc />
    public override Tensor SumPerSample(Tensor data)
    {
        var idx = SampleIndex.device == data.device ? SampleIndex : SampleIndex.to(data.device);
        var rowSums = data.reshape(RowCount, -1).sum(1);
        return torch.zeros(new[] { BatchSize }, dtype: data.dtype, device: data.device).index_add(0, idx, rowSums, 1.0);
    }

    /// <inheritdoc />
    public override Tensor CountPerSample(Tensor data)
    {
        long perRow = RowCount == 0 ? 0 : data.numel() / RowCount;
        var counts = RowCounts.Select(c => (double)(c * perRow)).ToArray();
        return torch.tensor(counts, dtype: data.dtype, device: data.device);
    }

    /// <inheritdoc />
    public override void Validate(Tensor data, string argumentName)
    {
        if (data.dim() < 1 || data.shape[0] != RowCount)
            throw new ArgumentException($"{argumentName}: expected {RowCount} rows on axis 0, found shape [{string.Join(", ", data.shape)}].", argumentName);
    }
}

/// <summary>A latent: its data tensor together with the layout that maps its elements to samples.</summary>
public sealed class Latent
{
    /// <summary>Wraps <paramref name="data"/> with <paramref name="layout"/>.</summary>
    public Latent(Tensor data, LatentLayout layout)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(layout);
        layout.Validate(data, nameof(data));
        Data = data;
        Layout = layout;
    }

    /// <summary>A dense latent <c>[B, ...]</c>.</summary>
    public static Latent Dense(Tensor data)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.dim() < 1) throw new ArgumentException("a dense latent needs at least one axis (the batch axis).", nameof(data));
        return new Latent(data, new DenseLayout(data.shape[0]));
    }

    /// <summary>The values.</summary>
    public Tensor Data { get; }

    /// <summary>How the values belong to samples.</summary>
    public LatentLayout Layout { get; }

    /// <summary>Number of samples.</summary>
    public long BatchSize => Layout.BatchSize;

    /// <summary>A latent with the same layout and new values (same shape).</summary>
    public Latent With(Tensor data)
    {
        if (!data.shape.SequenceEqual(Data.shape))
            throw new ArgumentException($"new latent data has shape [{string.Join(", ", data.shape)}], expected [{string.Join(", ", Data.shape)}].", nameof(data));
        return new Latent(data, Layout);
    }

    /// <summary>
    /// <paramref name="copies"/> copies of this latent concatenated along axis 0 (the batch axis of a dense latent,
    /// the row axis of a row latent), with the layout <see cref="LatentLayout.RepeatBatch"/> gives: a batch of
    /// <c>copies·B</c> samples whose copy k holds samples <c>[k·B, (k+1)·B)</c>. Undo it on an output with
    /// <see cref="SplitRepeated"/>.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="copies"/> &lt; 1.</exception>
    /// <exception cref="NotSupportedException">The layout cannot be repeated.</exception>
    public Latent RepeatBatch(int copies)
    {
        var layout = Layout.RepeatBatch(copies);
        var data = copies == 1 ? Data : torch.cat(Enumerable.Repeat(Data, copies).ToArray(), 0);
        return new Latent(data, layout);
    }

    /// <summary>
    /// Splits <paramref name="stacked"/>, a tensor shaped like the data of <see cref="RepeatBatch"/>(<paramref name="copies"/>)
    /// (<c>[copies·N, ...]</c> where this latent's data is <c>[N, ...]</c>), back into <paramref name="copies"/> views
    /// shaped like <see cref="Data"/>, copy k first to last.
    /// </summary>
    /// <exception cref="ArgumentException">Axis 0 of <paramref name="stacked"/> is not copies × this latent's.</exception>
    public Tensor[] SplitRepeated(Tensor stacked, int copies)
    {
        ArgumentNullException.ThrowIfNull(stacked);
        if (copies < 1) throw new ArgumentException($"copies must be >= 1, got {copies}.", nameof(copies));
        long n = Data.shape[0];
        if (stacked.dim() < 1 || stacked.shape[0] != n * copies)
            throw new ArgumentException($"{nameof(stacked)}: expected {copies} × {n} = {n * copies} entries on axis 0, found shape [{string.Join(", ", stacked.shape)}].", nameof(stacked));
        return Enumerable.Range(0, copies).Select(k => stacked.narrow(0, k * n, n)).ToArray();
    }

    /// <summary>Broadcasts a per-sample <c>[B]</c> tensor against <see cref="Data"/>.</summary>
    public Tensor PerSample(Tensor perSample) => Layout.Broadcast(perSample, Data);
}
