using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>TRELLIS's dense spatial reshapes (<c>trellis/modules/spatial.py</c>).</summary>
internal static class Spatial
{
    /// <summary>
    /// <c>[B, C, X, Y, Z]</c> → <c>[B, C·p³, X/p, Y/p, Z/p]</c>; token channel = <c>c·p³ + (i·p + j)·p + k</c> for the
    /// in-patch offset (i, j, k).
    /// </summary>
    public static Tensor Patchify3d(Tensor x, long p)
    {
        if (p == 1) return x.alias();
        long b = x.shape[0], c = x.shape[1], X = x.shape[2], Y = x.shape[3], Z = x.shape[4];
        for (int d = 2; d < 5; d++)
            if (x.shape[d] % p != 0) throw new ArgumentException($"dimension {d} of {Precision.Shape(x.shape)} is not divisible by the patch size {p}.", nameof(x));
        return x.reshape(b, c, X / p, p, Y / p, p, Z / p, p)
            .permute(0, 1, 3, 5, 7, 2, 4, 6)
            .reshape(b, c * p * p * p, X / p, Y / p, Z / p);
    }

    /// <summary>The exact inverse of <see cref="Patchify3d"/>: <c>[B, C·p³, X, Y, Z]</c> → <c>[B, C, X·p, Y·p, Z·p]</c>.</summary>
    public static Tensor Unpatchify3d(Tensor x, long p)
    {
        if (p == 1) return x.alias();
        long b = x.shape[0], cp = x.shape[1], X = x.shape[2], Y = x.shape[3], Z = x.shape[4];
        if (cp % (p * p * p) != 0) throw new ArgumentException($"channels {cp} of {Precision.Shape(x.shape)} are not divisible by patch_size³ = {p * p * p}.", nameof(x));
        return x.reshape(b, cp / (p * p * p), p, p, p, X, Y, Z)
            .permute(0, 1, 5, 2, 6, 3, 7, 4)
            .reshape(b, cp / (p * p * p), X * p, Y * p, Z * p);
    }

    /// <summary>
    /// TRELLIS's <c>pixel_shuffle_3d</c>: <c>[B, C·s³, H, W, D]</c> → <c>[B, C, sH, sW, sD]</c>; channel
    /// <c>c·s³ + (dx·s + dy)·s + dz</c> goes to voxel (s·x + dx, s·y + dy, s·z + dz).
    /// </summary>
    public static Tensor PixelShuffle3d(Tensor x, long s)
    {
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], d = x.shape[4];
        long c2 = c / (s * s * s);
        return x.reshape(b, c2, s, s, s, h, w, d)
            .permute(0, 1, 5, 2, 6, 3, 7, 4)
            .reshape(b, c2, h * s, w * s, d * s);
    }
}
