using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// A distribution of training times t ∈ [0, 1]. Sampling is split into a raw draw (what the random generator
/// produces) and a deterministic map from the raw draw to t, so that precomputed raw draws (golden vectors, replayed
/// runs) give exactly the same times.
/// </summary>
public abstract class TimeSampler
{
    /// <summary>Draws the raw random values for <paramref name="batchSize"/> samples (one generator call).</summary>
    public abstract Tensor DrawRaw(long batchSize, ScalarType dtype, Device? device = null, Generator? generator = null);

    /// <summary>Maps raw draws to times in [0, 1].</summary>
    public abstract Tensor FromRaw(Tensor raw);

    /// <summary>Draws <paramref name="batchSize"/> times: <c>FromRaw(DrawRaw(...))</c>.</summary>
    public Tensor Sample(long batchSize, ScalarType dtype = ScalarType.Float32, Device? device = null, Generator? generator = null)
    {
        if (batchSize < 1) throw new ArgumentException($"batchSize must be >= 1, got {batchSize}.", nameof(batchSize));
        using var scope = torch.NewDisposeScope();
        return FromRaw(DrawRaw(batchSize, dtype, device, generator)).MoveToOuterDisposeScope();
    }
}

/// <summary>t ~ U(0, 1): the raw draw is <c>torch.rand(B)</c> and the map is the identity.</summary>
public sealed class UniformTimeSampler : TimeSampler
{
    /// <summary>The shared instance.</summary>
    public static UniformTimeSampler Instance { get; } = new();

    /// <inheritdoc />
    public override Tensor DrawRaw(long batchSize, ScalarType dtype, Device? device = null, Generator? generator = null) =>
        torch.rand(new[] { batchSize }, dtype: dtype, device: device, generator: generator);

    /// <inheritdoc />
    public override Tensor FromRaw(Tensor raw) => raw.alias();

    /// <inheritdoc />
    public override string ToString() => "Uniform(0, 1)";
}

/// <summary>
/// t = sigmoid(mean + std·z), z ~ N(0, 1): the logit-normal distribution (TRELLIS's and MDT-dist's
/// <c>logitNormal</c> schedule; MDT-dist uses mean 1, std 1, which favours noisy times).
/// </summary>
public sealed class LogitNormalTimeSampler : TimeSampler
{
    /// <summary>Creates the sampler.</summary>
    /// <exception cref="ArgumentException"><paramref name="std"/> is not positive or a value is not finite.</exception>
    public LogitNormalTimeSampler(double mean = 0.0, double std = 1.0)
    {
        if (!double.IsFinite(mean)) throw new ArgumentException($"mean must be finite, got {mean}.", nameof(mean));
        if (!(std > 0) || !double.IsFinite(std)) throw new ArgumentException($"std must be positive and finite, got {std}.", nameof(std));
        Mean = mean;
        Std = std;
    }

    /// <summary>MDT-dist's default schedule: logit-normal(1, 1).</summary>
    public static LogitNormalTimeSampler MdtDist { get; } = new(1.0, 1.0);

    /// <summary>Mean of the logit.</summary>
    public double Mean { get; }

    /// <summary>Standard deviation of the logit.</summary>
    public double Std { get; }

    /// <inheritdoc />
    public override Tensor DrawRaw(long batchSize, ScalarType dtype, Device? device = null, Generator? generator = null) =>
        torch.randn(new[] { batchSize }, dtype: dtype, device: device, generator: generator);

    /// <inheritdoc />
    public override Tensor FromRaw(Tensor raw) => torch.sigmoid(raw * Std + Mean);

    /// <inheritdoc />
    public override string ToString() => $"LogitNormal({Mean}, {Std})";
}
