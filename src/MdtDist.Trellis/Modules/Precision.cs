using TorchSharp;
using MdtDist.Trellis.Sparse;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>dtype rules shared by the TRELLIS modules.</summary>
internal static class Precision
{
    /// <summary>
    /// The dtype TRELLIS's float32 up-casts compute in: float32 for float16 / bfloat16 / float32 inputs, float64 for
    /// float64 (the reference's <c>x.float()</c>, made "at least float32" so float64 runs stay exact).
    /// </summary>
    public static ScalarType AtLeastFloat32(ScalarType t) => t == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>True for the floating dtypes a model may compute in.</summary>
    public static bool IsSupportedFloat(ScalarType t) =>
        t is ScalarType.Float64 or ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16;

    /// <summary>Throws unless <paramref name="t"/> is float16, bfloat16, float32 or float64.</summary>
    public static void RequireFloat(ScalarType t, string argumentName)
    {
        if (!IsSupportedFloat(t))
            throw new ArgumentException($"{argumentName}: expected float16, bfloat16, float32 or float64, got {t}.", argumentName);
    }

    /// <summary>Formats a shape as [a, b, c].</summary>
    public static string Shape(long[] shape) => MdtDist.Core.ArgumentChecks.Shape(shape);

    /// <summary>
    /// <c>F.layer_norm</c> over the last axis, computed in at least float32, returned in the input dtype. On the CPU a
    /// bfloat16 input goes to libtorch's layer norm as it is (<see cref="NativeReducedLayerNorm"/>): that kernel computes
    /// in float32 and rounds once, like TRELLIS's <c>x.float()</c> … <c>.type(x.dtype)</c>, without the two casts' passes
    /// over memory (measured: results differ in ≈ 3·10⁻⁵ of the elements by one unit in the last place).
    /// </summary>
    public static Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, double eps)
    {
        if (NativeReducedLayerNorm(x, weight, bias))
            return nn.functional.layer_norm(x, new[] { x.shape[^1] }, weight, bias, eps);
        var ct = AtLeastFloat32(x.dtype);
        return nn.functional.layer_norm(x.As(ct), new[] { x.shape[^1] }, weight?.As(ct), bias?.As(ct), eps).As(x.dtype);
    }

    /// <summary>
    /// True when libtorch's own layer_norm gives the float32 round trip's result for <paramref name="x"/>: a bfloat16
    /// CPU tensor with bfloat16 or float32 affine parameters. libtorch's CPU kernel reads bfloat16, computes mean,
    /// variance and the affine map in float32 and rounds once, as <c>layer_norm(x.float()).to(bfloat16)</c> does, without
    /// the two casts of the activations (tested in BFloat16PathTests).
    /// </summary>
    internal static bool NativeReducedLayerNorm(Tensor x, Tensor? weight, Tensor? bias) =>
        x.dtype == ScalarType.BFloat16 && x.device_type == DeviceType.CPU
        && (weight is null || weight.dtype is ScalarType.BFloat16 or ScalarType.Float32)
        && (bias is null || (bias.dtype is ScalarType.BFloat16 or ScalarType.Float32 && (weight is null || bias.dtype == weight.dtype)));

    /// <summary>Moves <paramref name="x"/> to <paramref name="device"/> when it is elsewhere.</summary>
    public static Tensor On(this Tensor x, Device device) =>
        x.device_type == device.type && x.device_index == device.index ? x : x.to(device);

    /// <summary>
    /// Runs <paramref name="f"/> in its own dispose scope and moves its result out, so that the temporaries of one loop
    /// iteration (a block, a chunk) are freed at once instead of living until the caller's scope ends.
    /// </summary>
    public static Tensor Scoped(Func<Tensor> f)
    {
        using var scope = torch.NewDisposeScope();
        return f().MoveToOuterDisposeScope();
    }

    /// <summary><see cref="Scoped(Func{Tensor})"/> for a sparse result.</summary>
    public static SparseTensor Scoped(Func<SparseTensor> f)
    {
        using var scope = torch.NewDisposeScope();
        return f().MoveToOuterDisposeScope();
    }

    /// <summary>Casts <paramref name="x"/> to <paramref name="dtype"/> (returns <paramref name="x"/> itself when it already has that dtype).</summary>
    public static Tensor As(this Tensor x, ScalarType dtype) => x.dtype == dtype ? x : x.to(dtype);
}
