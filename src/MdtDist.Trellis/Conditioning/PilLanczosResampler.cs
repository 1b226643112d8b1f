using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// PIL's <c>Image.resize(size, LANCZOS)</c> for RGBA images, reproduced to the byte: the image is premultiplied
/// (<c>RGBA → RGBa</c>, rounded as PIL's <c>MULDIV255</c>), resampled with PIL's separable antialiased Lanczos-3
/// (coefficients in 22-bit fixed point, horizontal pass first, rounded and clipped to bytes after each pass) and
/// un-premultiplied (<c>RGBa → RGBA</c>, integer division). Written here because no kept .NET image library
/// reproduces PIL's fixed-point arithmetic, and TRELLIS's condition images come out of PIL (ImageSharp's float
/// Lanczos-3 differs from it by up to 26/255 at soft alpha edges; see docs/image-conditioning.md).
/// </summary>
internal static class PilLanczosResampler
{
    private const int PrecisionBits = 32 - 8 - 2;

    /// <summary>PIL's truncated sinc: sinc(x)·sinc(x/3) on [−3, 3).</summary>
    public static double Lanczos(double x)
    {
        if (-3.0 <= x && x < 3.0) return Sinc(x) * Sinc(x / 3.0);
        return 0.0;
    }

    private static double Sinc(double x)
    {
        if (x == 0.0) return 1.0;
        x *= Math.PI;
        return Math.Sin(x) / x;
    }

    /// <summary>
    /// Resizes <paramref name="image"/> to <paramref name="width"/> × <paramref name="height"/> as PIL does: as an RGBA
    /// image (premultiplied while resampling) or, with <paramref name="opaqueRgb"/>, as an RGB image (alpha set to 255).
    /// </summary>
    public static Image<Rgba32> Resize(Image<Rgba32> image, int width, int height, bool opaqueRgb = false)
    {
        int w = image.Width, h = image.Height;
        var src = new byte[w * h * 4];
        image.CopyPixelDataTo(src);
        if (opaqueRgb)
        {
            for (int i = 3; i < src.Length; i += 4) src[i] = 255;
        }
        else
        {
            // RGBA -> RGBa
            for (int i = 0; i < src.Length; i += 4)
            {
                int a = src[i + 3];
                for (int c = 0; c < 3; c++) src[i + c] = MulDiv255(src[i + c], a);
            }
        }
        byte[] cur = src;
        int cw = w, ch = h;
        if (width != w)
        {
            cur = Horizontal(cur, cw, ch, width);
            cw = width;
        }
        if (height != h)
        {
            cur = Vertical(cur, cw, ch, height);
            ch = height;
        }
        if (opaqueRgb)
        {
            for (int i = 3; i < cur.Length; i += 4) cur[i] = 255;
            return Image.LoadPixelData<Rgba32>(cur, width, height);
        }
        // RGBa -> RGBA
        for (int i = 0; i < cur.Length; i += 4)
        {
            int a = cur[i + 3];
            if (a == 255 || a == 0) continue;
            for (int c = 0; c < 3; c++) cur[i + c] = (byte)Math.Min(255, 255 * cur[i + c] / a);
        }
        return Image.LoadPixelData<Rgba32>(cur, width, height);
    }

    private static byte MulDiv255(int a, int b)
    {
        int tmp = a * b + 128;
        return (byte)(((tmp >> 8) + tmp) >> 8);
    }

    /// <summary>PIL's <c>precompute_coeffs</c> + <c>normalize_coeffs_8bpc</c>: per output index the first tap and the fixed-point weights.</summary>
    private static (int[] Min, int[][] K) Coefficients(int inSize, int outSize)
    {
        double scale = (double)inSize / outSize;
        double filterScale = Math.Max(scale, 1.0);
        double support = 3.0 * filterScale;
        var mins = new int[outSize];
        var ks = new int[outSize][];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale;
            double ss = 1.0 / filterScale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            var k = new double[xmax];
            double ww = 0;
            for (int x = 0; x < xmax; x++)
            {
                double v = Lanczos((x + xmin - center + 0.5) * ss);
                k[x] = v;
                ww += v;
            }
            var ki = new int[xmax];
            for (int x = 0; x < xmax; x++)
            {
                double v = ww != 0 ? k[x] / ww : k[x];
                ki[x] = (int)(v < 0 ? Math.Truncate(-0.5 + v * (1 << PrecisionBits)) : Math.Truncate(0.5 + v * (1 << PrecisionBits)));
            }
            mins[xx] = xmin;
            ks[xx] = ki;
        }
        return (mins, ks);
    }

    private static byte Clip8(long v)
    {
        long s = v >> PrecisionBits;
        return (byte)(s < 0 ? 0 : s > 255 ? 255 : s);
    }

    private static byte[] Horizontal(byte[] src, int w, int h, int outW)
    {
        var (mins, ks) = Coefficients(w, outW);
        var dst = new byte[outW * h * 4];
        for (int y = 0; y < h; y++)
            for (int xx = 0; xx < outW; xx++)
            {
                var k = ks[xx];
                int xmin = mins[xx];
                for (int c = 0; c < 4; c++)
                {
                    long ss = 1L << (PrecisionBits - 1);
                    for (int x = 0; x < k.Length; x++) ss += src[(y * w + x + xmin) * 4 + c] * (long)k[x];
                    dst[(y * outW + xx) * 4 + c] = Clip8(ss);
                }
            }
        return dst;
    }

    private static byte[] Vertical(byte[] src, int w, int h, int outH)
    {
        var (mins, ks) = Coefficients(h, outH);
        var dst = new byte[w * outH * 4];
        for (int yy = 0; yy < outH; yy++)
        {
            var k = ks[yy];
            int ymin = mins[yy];
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 4; c++)
                {
                    long ss = 1L << (PrecisionBits - 1);
                    for (int y = 0; y < k.Length; y++) ss += src[((y + ymin) * w + x) * 4 + c] * (long)k[y];
                    dst[(yy * w + x) * 4 + c] = Clip8(ss);
                }
        }
        return dst;
    }
}
