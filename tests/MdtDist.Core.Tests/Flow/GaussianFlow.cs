using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Flow;

/// <summary>
/// The exact marginal velocity of the TRELLIS path for Gaussian data N(μ, s²I): with a = 1 − t, b = σ + (1 − σ)t,
/// V = a²s² + b², v(x, t) = ((1 − σ)b − a s²)/V · (x − aμ) − μ. Its flow map is x(t) = aμ + sqrt(V(t)/V(t₀))·(x(t₀) − a₀μ).
/// </summary>
internal sealed class GaussianFlow : IFlowModel
{
    public GaussianFlow(double mu, double s, double sigma = RectifiedFlowPath.TrellisSigmaMin) { Mu = mu; S = s; Sigma = sigma; }
    public double Mu { get; }
    public double S { get; }
    public double Sigma { get; }
    public int Calls { get; private set; }

    public double Variance(double t)
    {
        double a = 1 - t, b = Sigma + (1 - Sigma) * t;
        return a * a * S * S + b * b;
    }

    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        Calls++;
        var tb = x.PerSample(t);
        var a = 1 - tb;
        var b = Sigma + (1 - Sigma) * tb;
        var v = a * a * S * S + b * b;
        return ((1 - Sigma) * b - a * S * S) / v * (x.Data - a * Mu) - Mu;
    }

    /// <summary>Exact solution at t1 of the ODE started at x0 at time t0.</summary>
    public Tensor Exact(Tensor x, double t0, double t1) =>
        (1 - t1) * Mu + Math.Sqrt(Variance(t1) / Variance(t0)) * (x - (1 - t0) * Mu);
}
