using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// The exact marginal velocity field of the TRELLIS path for data drawn from an isotropic Gaussian mixture
/// Σ_k π_k N(μ_k, s²I) in D dimensions: an analytic "perfect teacher" for tests, samples and benchmarks.
/// With a = 1 − t, b = σ + (1 − σ)t and V = a²s² + b², x_t | k ~ N(aμ_k, V·I) and
/// v(x, t) = Σ_k P(k | x_t) · [((1 − σ)b − a s²)/V · (x − aμ_k) − μ_k].
/// Works on dense latents <c>[B, D]</c>.
/// </summary>
public sealed class GaussianMixtureFlow : IFlowModel
{
    private readonly double[,] _means;
    private readonly double[] _logWeights;

    /// <summary>Creates the mixture.</summary>
    /// <param name="means">Component means, K × D.</param>
    /// <param name="std">Component standard deviation s &gt; 0 (shared, isotropic).</param>
    /// <param name="weights">Mixture weights (normalised here); uniform when null.</param>
    /// <param name="sigmaMin">The path's σ_min (TRELLIS: 1e-5).</param>
    /// <exception cref="ArgumentException">Empty means, non-positive std, or weights of the wrong length / not positive.</exception>
    public GaussianMixtureFlow(double[,] means, double std, double[]? weights = null, double sigmaMin = RectifiedFlowPath.TrellisSigmaMin)
    {
        ArgumentNullException.ThrowIfNull(means);
        if (means.GetLength(0) < 1 || means.GetLength(1) < 1) throw new ArgumentException("means must be a non-empty K × D array.", nameof(means));
        if (!(std > 0) || !double.IsFinite(std)) throw new ArgumentException($"std must be a positive finite number, got {std}.", nameof(std));
        int k = means.GetLength(0);
        weights ??= Enumerable.Repeat(1.0, k).ToArray();
        if (weights.Length != k) throw new ArgumentException($"weights has {weights.Length} entries, expected {k} (one per component).", nameof(weights));
        if (weights.Any(w => !(w > 0))) throw new ArgumentException("weights must be positive.", nameof(weights));
        double total = weights.Sum();
        _means = (double[,])means.Clone();
        _logWeights = weights.Select(w => Math.Log(w / total)).ToArray();
        Std = std;
        SigmaMin = sigmaMin;
    }

    /// <summary>Number of components K.</summary>
    public int Components => _means.GetLength(0);

    /// <summary>Dimension D.</summary>
    public int Dimension => _means.GetLength(1);

    /// <summary>Component standard deviation s.</summary>
    public double Std { get; }

    /// <summary>The path's σ_min.</summary>
    public double SigmaMin { get; }

    /// <summary>The classic test problem: 8 components on a circle of radius 4 in 2-D, s = 0.3.</summary>
    public static GaussianMixtureFlow Ring(int components = 8, double radius = 4.0, double std = 0.3)
    {
        var m = new double[components, 2];
        for (int i = 0; i < components; i++)
        {
            m[i, 0] = radius * Math.Cos(2 * Math.PI * i / components);
            m[i, 1] = radius * Math.Sin(2 * Math.PI * i / components);
        }
        return new GaussianMixtureFlow(m, std);
    }

    /// <summary>Draws <paramref name="count"/> data samples x0 <c>[count, D]</c>.</summary>
    public Tensor SampleData(long count, Generator? generator = null, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        var probs = torch.tensor(_logWeights, dtype: ScalarType.Float64).exp();
        var comp = torch.multinomial(probs, count, replacement: true, generator: generator);
        var means = MeansTensor(ScalarType.Float64, null).index_select(0, comp);
        var x = means + Std * torch.randn(new[] { count, (long)Dimension }, dtype: ScalarType.Float64, generator: generator);
        return x.to(dtype, device ?? CPU).MoveToOuterDisposeScope();
    }

    private Tensor MeansTensor(ScalarType dtype, Device? device)
    {
        int k = Components, d = Dimension;
        var flat = new double[k * d];
        for (int i = 0; i < k; i++) for (int j = 0; j < d; j++) flat[i * d + j] = _means[i, j];
        return torch.tensor(flat, new long[] { k, d }, dtype: dtype, device: device);
    }

    /// <inheritdoc />
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        var data = x.Data;
        if (data.dim() != 2 || data.shape[1] != Dimension)
            throw new ArgumentException($"expected a dense latent [B, {Dimension}], found [{string.Join(", ", data.shape)}].", nameof(x));
        using var scope = torch.NewDisposeScope();
        var mu = MeansTensor(data.dtype, data.device);                  // [K, D]
        var tb = t.to(data.dtype, data.device).reshape(-1, 1, 1);       // [B, 1, 1]
        var a = 1 - tb;
        var b = SigmaMin + (1 - SigmaMin) * tb;
        var v = a * a * (Std * Std) + b * b;                            // [B, 1, 1]
        var diff = data.unsqueeze(1) - a * mu.unsqueeze(0);             // [B, K, D]
        var logw = torch.tensor(_logWeights, dtype: data.dtype, device: data.device).unsqueeze(0)
                   - 0.5 * diff.square().sum(2) / v.squeeze(2);         // [B, K] (shared normaliser cancels)
        var post = torch.softmax(logw, 1).unsqueeze(2);                 // [B, K, 1]
        var vk = ((1 - SigmaMin) * b - a * (Std * Std)) / v * diff - mu.unsqueeze(0);
        return (post * vk).sum(1).MoveToOuterDisposeScope();
    }
}
