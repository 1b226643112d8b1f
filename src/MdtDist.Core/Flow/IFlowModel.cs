using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// A velocity field v(x_t, t | c) of a rectified flow in TRELLIS's convention (t ∈ [0, 1], t = 1 is pure noise).
/// Implementations must return a tensor of the same shape, dtype and device as <c>x.Data</c>.
/// </summary>
public interface IFlowModel
{
    /// <summary>Evaluates the velocity.</summary>
    /// <param name="x">The noisy latent x_t.</param>
    /// <param name="t">Per-sample times, <c>[B]</c>, in [0, 1] (not scaled by 1000). Core's solvers pass float64 so that
    /// adapters can scale it exactly; cast it to the network's dtype where needed (<see cref="Latent.PerSample"/> does).</param>
    /// <param name="condition">Condition tokens (e.g. DINOv2 features <c>[B or 1, L, C]</c>), or null for an unconditional model.</param>
    Tensor Velocity(Latent x, Tensor t, Tensor? condition);

    /// <summary>
    /// The network evaluations one call of <see cref="Velocity"/> costs at time <paramref name="t"/>: 1 for a plain model
    /// (the default); wrappers that call their model more than once (guidance) report their own count, so solvers count
    /// evaluations without inspecting the model's type.
    /// </summary>
    int EvaluationsAt(double t) => 1;
}

/// <summary>An <see cref="IFlowModel"/> from a delegate (analytic velocity fields, tests, adapters).</summary>
public sealed class DelegateFlowModel : IFlowModel
{
    private readonly Func<Latent, Tensor, Tensor?, Tensor> _f;

    /// <summary>Wraps <paramref name="velocity"/>.</summary>
    public DelegateFlowModel(Func<Latent, Tensor, Tensor?, Tensor> velocity) => _f = velocity ?? throw new ArgumentNullException(nameof(velocity));

    /// <inheritdoc />
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition) => _f(x, t, condition);
}
