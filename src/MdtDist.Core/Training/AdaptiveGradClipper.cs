using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// TRELLIS's <c>AdaptiveGradClipper</c>: gradients are clipped to a total L2 norm of <c>CurrentMaxNorm</c>
/// (PyTorch's <c>clip_grad_norm_</c>: factor min(1, max / (‖g‖ + 1e-6))). Every finite norm is stored (as float32)
/// in a ring buffer of <see cref="BufferSize"/> entries; once the buffer is full, after each store the bound
/// becomes the <see cref="Percentile"/>-th percentile (linear interpolation, numpy's default) of the buffer, capped
/// at <see cref="MaxNorm"/>. Until then the bound is <see cref="MaxNorm"/> (no clipping when that is null).
/// </summary>
public sealed class AdaptiveGradClipper
{
    private float[] _norms;

    /// <summary>Creates the clipper (TRELLIS / MDT-dist: max norm 1.0, 95th percentile, 1000 entries).</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public AdaptiveGradClipper(double? maxNorm = 1.0, double percentile = 95.0, int bufferSize = 1000)
    {
        if (maxNorm is { } m && !(m > 0)) throw new ArgumentException($"maxNorm must be positive, got {m}.", nameof(maxNorm));
        if (!(percentile >= 0 && percentile <= 100)) throw new ArgumentException($"percentile must be in [0, 100], got {percentile}.", nameof(percentile));
        if (bufferSize < 1) throw new ArgumentException($"bufferSize must be >= 1, got {bufferSize}.", nameof(bufferSize));
        MaxNorm = maxNorm;
        Percentile = percentile;
        BufferSize = bufferSize;
        _norms = new float[bufferSize];
        CurrentMaxNorm = maxNorm;
    }

    /// <summary>The configured upper bound (null: none).</summary>
    public double? MaxNorm { get; }

    /// <summary>The percentile of recent norms used as the bound.</summary>
    public double Percentile { get; }

    /// <summary>Number of recent norms kept.</summary>
    public int BufferSize { get; }

    /// <summary>The bound in force (null: no clipping yet).</summary>
    public double? CurrentMaxNorm { get; private set; }

    /// <summary>Next write position in the ring buffer.</summary>
    public int BufferPosition { get; private set; }

    /// <summary>Number of valid entries in the ring buffer.</summary>
    public int BufferLength { get; private set; }

    /// <summary>A copy of the ring buffer.</summary>
    public float[] RecentNorms => (float[])_norms.Clone();

    /// <summary>Clips the gradients of <paramref name="parameters"/> in place and returns their total norm before clipping.</summary>
    public double Clip(IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        double max = CurrentMaxNorm ?? double.PositiveInfinity;
        double norm = ClipGradNorm(parameters, max);
        if (double.IsFinite(norm))
        {
            _norms[BufferPosition] = (float)norm;
            BufferPosition = (BufferPosition + 1) % BufferSize;
            BufferLength = Math.Min(BufferLength + 1, BufferSize);
            if (BufferLength == BufferSize)
            {
                double p = PercentileOf(_norms, Percentile);
                CurrentMaxNorm = MaxNorm is { } cap ? Math.Min(p, cap) : p;
            }
        }
        return norm;
    }

    /// <summary>
    /// PyTorch's <c>clip_grad_norm_</c> (L2): the norm of the per-tensor gradient norms; every gradient is multiplied by
    /// min(1, maxNorm / (norm + 1e-6)). Parameters without a gradient are ignored. Returns the norm before clipping.
    /// </summary>
    public static double ClipGradNorm(IEnumerable<Tensor> parameters, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0.0;
        var norms = torch.stack(grads.Select(g => torch.linalg.vector_norm(g, 2)).ToArray());
        var total = torch.linalg.vector_norm(norms, 2);
        double totalValue = total.to(ScalarType.Float64).item<double>();
        var coef = (maxNorm / (total + 1e-6)).clamp_max(1.0);
        foreach (var g in grads) g.mul_(coef.to(g.dtype, g.device));
        return totalValue;
    }

    /// <summary>numpy's <c>percentile(values, q)</c> with the default linear method.</summary>
    internal static double PercentileOf(IReadOnlyList<float> values, double q)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0) throw new ArgumentException("no values.", nameof(values));
        var sorted = values.Select(v => (double)v).OrderBy(v => v).ToArray();
        double pos = q / 100.0 * (sorted.Length - 1);
        int lo = (int)Math.Floor(pos);
        int hi = Math.Min(lo + 1, sorted.Length - 1);
        double frac = pos - lo;
        double a = sorted[lo], b = sorted[hi], d = b - a;
        return frac >= 0.5 ? b - d * (1 - frac) : a + d * frac; // numpy's _lerp

    }

    internal void Restore(float[] norms, double? currentMaxNorm, int position, int length)
    {
        if (norms.Length != BufferSize) throw new ArgumentException($"the saved clipper buffer has {norms.Length} entries, this clipper {BufferSize}.", nameof(norms));
        if (position < 0 || position >= BufferSize || length < 0 || length > BufferSize)
            throw new ArgumentException($"invalid clipper position {position} / length {length} for buffer size {BufferSize}.", nameof(position));
        _norms = (float[])norms.Clone();
        CurrentMaxNorm = currentMaxNorm;
        BufferPosition = position;
        BufferLength = length;
    }

    /// <inheritdoc />
    public override string ToString() => $"AdaptiveGradClipper(max_norm={MaxNorm}, clip_percentile={Percentile})";
}
