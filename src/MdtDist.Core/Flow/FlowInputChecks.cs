using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Flow;

/// <summary>
/// The one place where flow-model entry points check their inputs' values: times in [0, 1] and finite conditions,
/// negative conditions and latent features. NaN or ±inf in any of them otherwise flows through the network and comes
/// out as a NaN sample with no error. Each check costs one reduction and one host synchronisation.
/// </summary>
internal static class FlowInputChecks
{
    /// <summary>Throws when the floating tensor <paramref name="value"/> holds NaN or ±inf (null and integer tensors pass).</summary>
    /// <exception cref="ArgumentException">A non-finite value; the message names <paramref name="name"/>, the count and the first offender.</exception>
    public static void Finite(Tensor? value, string name)
    {
        if (value is null || !value.is_floating_point()) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var bad = torch.isfinite(value).logical_not_();
        long count = bad.sum().item<long>();
        if (count == 0) return;
        long first = bad.reshape(-1).nonzero()[0, 0].item<long>();
        double v = value.detach().reshape(-1)[first].to(ScalarType.Float64).item<double>();
        throw new ArgumentException(
            $"{name} contains {count} NaN or infinite value(s) (the first at flat index {first} of shape [{string.Join(", ", value.shape)}] is {v}).", name);
    }

    /// <summary>Throws unless every value of <paramref name="t"/> is a finite number in [0, 1] (t = 1 is pure noise).</summary>
    /// <exception cref="ArgumentException">A time outside [0, 1] or not finite; the message names <paramref name="name"/> and the value.</exception>
    public static void UnitTime(Tensor t, string name)
    {
        ArgumentNullException.ThrowIfNull(t);
        Finite(t, name);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var tt = t.detach();
        var outside = tt.lt(0).logical_or_(tt.gt(1));
        if (!outside.any().item<bool>()) return;
        long first = outside.reshape(-1).nonzero()[0, 0].item<long>();
        double v = tt.reshape(-1)[first].to(ScalarType.Float64).item<double>();
        throw new ArgumentException($"{name} must lie in [0, 1] (t = 1 is pure noise, models see t before any ×1000 scaling); found {v} at index {first}.", name);
    }
}
