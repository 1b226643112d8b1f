using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// A trainable flow model: an <see cref="IFlowModel"/> whose weights live in a TorchSharp module (parameters,
/// buffers, <c>state_dict</c>). The distiller trains, checkpoints and copies networks through <see cref="Module"/>.
/// </summary>
public interface IFlowNetwork : IFlowModel
{
    /// <summary>The module that owns every weight the velocity depends on.</summary>
    nn.Module Module { get; }
}

/// <summary>An <see cref="IFlowNetwork"/> from a module and a velocity function that evaluates it.</summary>
public sealed class FlowNetwork : IFlowNetwork
{
    private readonly Func<Latent, Tensor, Tensor?, Tensor> _velocity;

    /// <summary>Wraps <paramref name="module"/>; <paramref name="velocity"/> must evaluate that module (not another instance).</summary>
    public FlowNetwork(nn.Module module, Func<Latent, Tensor, Tensor?, Tensor> velocity)
    {
        Module = module ?? throw new ArgumentNullException(nameof(module));
        _velocity = velocity ?? throw new ArgumentNullException(nameof(velocity));
    }

    /// <inheritdoc />
    public nn.Module Module { get; }

    /// <inheritdoc />
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition) => _velocity(x, t, condition);
}
