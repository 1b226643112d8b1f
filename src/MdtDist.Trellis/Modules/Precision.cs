using TorchSharp;
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

    /// <summary>Casts <paramref name="x"/> to <paramref name="t"/> (returns <paramref name="x"/> itself when it already has that dtype).</summary>
    public static Tensor Cast(Tensor x, ScalarType t) => x.dtype == t ? x : x.to(t);

    /// <summary>Formats a shape as [a, b, c].</summary>
    public static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";
}
