using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.TestSupport;

/// <summary>
/// Tolerances for networks whose torso runs in a reduced floating-point format, derived from the format and the depth of
/// the network instead of measured on one CPU (libtorch takes different bf16/fp16 kernels on CPUs with and without
/// AVX512-BF16 / AVX512-FP16, so a measured bar can fail elsewhere).
/// </summary>
/// <remarks>
/// Derivation. A format with p significant bits rounds with unit roundoff u = 2^−p (bf16: p = 8, u ≈ 3.9e-3; fp16: p = 11,
/// u ≈ 4.9e-4; fp32: p = 24). A layer whose weights are stored in that format sees its input, its weights and its output
/// rounded: each perturbs the layer's output by at most u relative (in the 2-norm, for independent per-entry roundings
/// the perturbation of W·x is ≤ u·‖W‖‖x‖, ≈ u·‖W x‖ for the random well-conditioned weights of the tests), so ≤ 3u per
/// layer. The following layers (normalised, residual, Lipschitz ≈ 1) carry earlier perturbations on without growing them
/// beyond a factor 2, so after L rounded layers the relative 2-norm error is below 2 · 3u · L = 6·u·L, whatever kernel
/// (fp32 or low-precision accumulation) the CPU uses. The bar is independent of the CPU; a broken reduced-precision path
/// (a wrong cast, garbage weights) gives a relative error of order 1, far above it for the depths tested (L·6u ≪ 1).
/// </remarks>
public static class ReducedPrecision
{
    /// <summary>Significant bits (with the implicit bit) of a floating format.</summary>
    public static int SignificantBits(ScalarType format) => format switch
    {
        ScalarType.BFloat16 => 8,
        ScalarType.Float16 => 11,
        ScalarType.Float32 => 24,
        ScalarType.Float64 => 53,
        _ => throw new ArgumentException($"{format} is not a floating format.", nameof(format)),
    };

    /// <summary>Unit roundoff u = 2^−p.</summary>
    public static double UnitRoundoff(ScalarType format) => Math.Pow(2, -SignificantBits(format));

    /// <summary>The layers of <paramref name="module"/> whose weight matrix or kernel is stored in <paramref name="format"/>.</summary>
    public static int RoundedLayers(nn.Module module, ScalarType format) =>
        module.named_parameters().Count(p => p.name.EndsWith("weight", StringComparison.Ordinal) && p.parameter.dim() >= 2 && p.parameter.dtype == format);

    /// <summary>The bar 6·u·L on the relative 2-norm error after <paramref name="roundedLayers"/> layers in <paramref name="format"/>.</summary>
    public static double Tolerance(ScalarType format, int roundedLayers)
    {
        if (roundedLayers < 1) throw new ArgumentException("a reduced-precision network has at least one rounded layer.", nameof(roundedLayers));
        return 6 * UnitRoundoff(format) * roundedLayers;
    }

    /// <summary>‖actual − reference‖₂ / ‖reference‖₂, computed in float64.</summary>
    public static double RelativeError(Tensor reference, Tensor actual)
    {
        using var scope = torch.NewDisposeScope();
        var r = reference.detach().to(ScalarType.Float64).cpu();
        var a = actual.detach().to(ScalarType.Float64).cpu();
        return (a - r).norm().item<double>() / r.norm().item<double>();
    }
}
