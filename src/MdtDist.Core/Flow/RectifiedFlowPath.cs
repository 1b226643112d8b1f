using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// The rectified-flow probability path in TRELLIS's convention:
/// x_t = (1 − t)·x0 + (σ + (1 − σ)·t)·ε, velocity v = (1 − σ)·ε − x0, t ∈ [0, 1] with t = 1 pure noise.
/// Every method takes per-sample times <c>[B]</c> and broadcasts them with the latent's layout.
/// </summary>
public sealed class RectifiedFlowPath
{
    /// <summary>TRELLIS's σ_min.</summary>
    public const double TrellisSigmaMin = 1e-5;

    /// <summary>The path with TRELLIS's σ_min = 1e-5.</summary>
    public static RectifiedFlowPath Trellis { get; } = new(TrellisSigmaMin);

    /// <summary>Creates the path with minimum noise level <paramref name="sigmaMin"/> ∈ [0, 1).</summary>
    public RectifiedFlowPath(double sigmaMin)
    {
        if (!(sigmaMin >= 0 && sigmaMin < 1)) throw new ArgumentException($"sigmaMin must be in [0, 1), got {sigmaMin}.", nameof(sigmaMin));
        SigmaMin = sigmaMin;
    }

    /// <summary>σ_min.</summary>
    public double SigmaMin { get; }

    /// <summary>The noise coefficient σ(t) = σ + (1 − σ)·t (a per-sample tensor).</summary>
    public Tensor NoiseScale(Tensor t) => SigmaMin + (1 - SigmaMin) * t;

    /// <summary>x_t = (1 − t)·x0 + (σ + (1 − σ)t)·ε.</summary>
    public Tensor Interpolate(Latent x0, Tensor noise, Tensor t)
    {
        var tb = x0.PerSample(t);
        return (1 - tb) * x0.Data + (SigmaMin + (1 - SigmaMin) * tb) * noise;
    }

    /// <summary>The conditional velocity target v = (1 − σ)·ε − x0.</summary>
    public Tensor TargetVelocity(Tensor x0, Tensor noise) => (1 - SigmaMin) * noise - x0;

    /// <summary>The data prediction x0 = (1 − σ)·x_t − (σ + (1 − σ)t)·v (TRELLIS's <c>pred_x_0</c>).</summary>
    public Tensor PredictX0(Latent xt, Tensor t, Tensor v)
    {
        var tb = xt.PerSample(t);
        return (1 - SigmaMin) * xt.Data - (SigmaMin + (1 - SigmaMin) * tb) * v;
    }

    /// <summary>The noise prediction ε = (1 − t)·v + x_t (exact inverse of <see cref="Interpolate"/> given v).</summary>
    public Tensor PredictNoise(Latent xt, Tensor t, Tensor v)
    {
        var tb = xt.PerSample(t);
        return (1 - tb) * v + xt.Data;
    }

    /// <summary>One Euler step from t to t_prev: x ← x − (t − t_prev)·v, per sample.</summary>
    public static Tensor EulerStep(Latent xt, Tensor t, Tensor tPrev, Tensor v) => xt.Data - xt.PerSample(t - tPrev) * v;
}
