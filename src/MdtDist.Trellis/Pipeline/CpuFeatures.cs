using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>
/// What the CPU offers for 16-bit compute, and the compute dtype to pick from it. libtorch runs bfloat16 matrix products
/// on oneDNN's native kernels only where the CPU has AVX512-BF16 or AMX-BF16; elsewhere it emulates them (slower than
/// float32), so bfloat16 is chosen automatically only on such CPUs and never silently elsewhere. float16 is never chosen
/// automatically: without AVX512-FP16 or AMX-FP16 libtorch multiplies float16 matrices in a scalar reference loop
/// (0.4 GFLOP/s against 182 in float32 on a 2-core AMD EPYC with AVX512-BF16), see <see cref="ReducedPrecisionWarning"/>.
/// </summary>
public static class CpuFeatures
{
    private static readonly Lazy<IReadOnlySet<string>> Flags = new(() => ReadFlags("/proc/cpuinfo"));

    /// <summary>The CPU flags of the first processor in <c>/proc/cpuinfo</c> (empty where there is no such file, e.g. off Linux).</summary>
    public static IReadOnlySet<string> CpuFlags => Flags.Value;

    /// <summary>True when the CPU has native bfloat16 arithmetic (<c>avx512_bf16</c> or <c>amx_bf16</c> in /proc/cpuinfo).</summary>
    public static bool HasNativeBFloat16 => HasNativeBFloat16In(CpuFlags);

    /// <summary>True when <paramref name="flags"/> name a native bfloat16 instruction set (<c>avx512_bf16</c>, <c>amx_bf16</c>).</summary>
    internal static bool HasNativeBFloat16In(IReadOnlySet<string> flags)
    {
        ArgumentNullException.ThrowIfNull(flags);
        return flags.Contains("avx512_bf16") || flags.Contains("amx_bf16");
    }

    /// <summary>True when the CPU has native float16 arithmetic (<c>avx512_fp16</c> or <c>amx_fp16</c> in /proc/cpuinfo).</summary>
    public static bool HasNativeFloat16 => HasNativeFloat16In(CpuFlags);

    /// <summary>True when <paramref name="flags"/> name a native float16 instruction set (<c>avx512_fp16</c>, <c>amx_fp16</c>).</summary>
    internal static bool HasNativeFloat16In(IReadOnlySet<string> flags)
    {
        ArgumentNullException.ThrowIfNull(flags);
        return flags.Contains("avx512_fp16") || flags.Contains("amx_fp16");
    }

    /// <summary>
    /// Why computing in <paramref name="dtype"/> on this CPU (or one with <paramref name="flags"/>) is slower than float32,
    /// or null when it is not: bfloat16 without AVX512-BF16/AMX-BF16 is emulated; float16 without AVX512-FP16/AMX-FP16
    /// falls back to libtorch's scalar reference GEMM, hundreds of times slower than float32 (a full TRELLIS run would
    /// take days). float32 and float64 always give null.
    /// </summary>
    /// <param name="dtype">The compute dtype.</param>
    /// <param name="flags">CPU flags; null means this machine's (<see cref="CpuFlags"/>).</param>
    public static string? ReducedPrecisionWarning(ScalarType dtype, IReadOnlySet<string>? flags = null)
    {
        flags ??= CpuFlags;
        return dtype switch
        {
            ScalarType.BFloat16 when !HasNativeBFloat16In(flags) =>
                "this CPU has no native bfloat16 (avx512_bf16 / amx_bf16): libtorch emulates it, slower than float32.",
            ScalarType.Float16 when !HasNativeFloat16In(flags) =>
                "this CPU has no native float16 (avx512_fp16 / amx_fp16): libtorch multiplies float16 matrices in a scalar " +
                "reference loop, hundreds of times slower than float32 (0.4 against 182 GFLOP/s on a 2-core AMD EPYC). " +
                "Use bfloat16 where the CPU has it, float32 elsewhere.",
            _ => null,
        };
    }

    /// <summary>
    /// Resolves a compute-dtype name: <c>float32</c>, <c>bfloat16</c>, <c>float16</c>, or <c>auto</c> (bfloat16 when the CPU
    /// has native bfloat16, float32 otherwise).
    /// </summary>
    /// <param name="name">The name (case-insensitive; <c>fp32</c>, <c>bf16</c>, <c>fp16</c> are accepted).</param>
    /// <param name="flags">CPU flags to decide <c>auto</c> with; null means this machine's (<see cref="CpuFlags"/>).</param>
    /// <exception cref="ArgumentException">An unknown name.</exception>
    public static ScalarType ResolveComputeDType(string name, IReadOnlySet<string>? flags = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.ToLowerInvariant() switch
        {
            "auto" => HasNativeBFloat16In(flags ?? CpuFlags) ? ScalarType.BFloat16 : ScalarType.Float32,
            "float32" or "fp32" => ScalarType.Float32,
            "bfloat16" or "bf16" => ScalarType.BFloat16,
            "float16" or "fp16" => ScalarType.Float16,
            _ => throw new ArgumentException($"unknown compute dtype '{name}' (expected auto, float32, bfloat16 or float16).", nameof(name)),
        };
    }

    /// <summary>Reads the <c>flags</c> line of the first processor of a <c>/proc/cpuinfo</c>-format file.</summary>
    internal static IReadOnlySet<string> ReadFlags(string path)
    {
        try
        {
            if (!File.Exists(path)) return new HashSet<string>();
            foreach (var line in File.ReadLines(path))
            {
                int colon = line.IndexOf(':');
                if (colon < 0 || line[..colon].Trim() != "flags") continue;
                return new HashSet<string>(line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries), StringComparer.Ordinal);
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return new HashSet<string>();
    }
}
