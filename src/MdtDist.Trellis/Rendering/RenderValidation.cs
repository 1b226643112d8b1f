using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Checks and small tensor helpers the rasterisers share.</summary>
internal static class RenderValidation
{
    /// <summary>Largest supported rendered side (resolution × supersampling), to refuse absurd allocations early.</summary>
    public const int MaxSide = 16384;

    public static void CheckCommon(int resolution, int ssaa, IReadOnlyList<double>? background)
    {
        if (resolution < 1) throw new ArgumentException($"Resolution must be >= 1; found {resolution}", "options");
        if (ssaa < 1) throw new ArgumentException($"Ssaa must be >= 1; found {ssaa}", "options");
        if ((long)resolution * ssaa > MaxSide)
            throw new ArgumentException($"Resolution × Ssaa must be <= {MaxSide}; found {resolution} × {ssaa}", "options");
        if (background is null || background.Count != 3 || background.Any(v => !double.IsFinite(v)))
            throw new ArgumentException($"Background must hold 3 finite values (RGB); found [{(background is null ? "null" : string.Join(", ", background))}]", "options");
    }

    /// <summary>The elements of <paramref name="t"/> in row-major order, copied to a new host array (empty for an empty tensor).</summary>
    /// <remarks>One bulk copy of the tensor's bytes (TorchSharp's element accessor is far slower for large tensors); the
    /// tensor's element type must be <typeparamref name="T"/>.</remarks>
    public static T[] HostArray<T>(Tensor t) where T : unmanaged
    {
        if (t.numel() == 0) return Array.Empty<T>();
        using var c = t.cpu().contiguous();
        ReadOnlySpan<byte> raw = c.bytes;
        if (raw.Length != t.numel() * System.Runtime.CompilerServices.Unsafe.SizeOf<T>())
            throw new ArgumentException($"tensor of {t.dtype} does not hold {typeof(T).Name} elements", nameof(t));
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(raw).ToArray();
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming <paramref name="what"/> and the first bad row when a row of
    /// <paramref name="values"/> (rows of <paramref name="width"/> numbers) holds NaN or ±∞.</summary>
    public static void CheckFiniteRows(double[] values, int width, string what, string paramName)
    {
        long count = 0, first = -1;
        for (int i = 0; i < values.Length; i += width)
        {
            bool bad = false;
            for (int j = 0; j < width; j++) bad |= !double.IsFinite(values[i + j]);
            if (!bad) continue;
            if (first < 0) first = i / width;
            count++;
        }
        if (count > 0) throw new ArgumentException($"{what} holds {count} row(s) with NaN or infinite values (first: row {first})", paramName);
    }

    /// <summary>Averages <paramref name="factor"/>×<paramref name="factor"/> blocks of an [H, W, C] image (a box filter).</summary>
    public static Tensor Downsample(Tensor image, int factor)
    {
        using var scope = torch.NewDisposeScope();
        var chw = image.permute(2, 0, 1).unsqueeze(0);
        var pooled = torch.nn.functional.avg_pool2d(chw, new long[] { factor, factor });
        return pooled.squeeze(0).permute(1, 2, 0).contiguous().MoveToOuterDisposeScope();
    }
}
