using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>ImageNet normalisation as torchvision's <c>Normalize(mean, std)</c>, the input convention of DINOv2.</summary>
public static class ImageNet
{
    /// <summary>Per-channel mean (R, G, B).</summary>
    public static IReadOnlyList<double> Mean { get; } = new[] { 0.485, 0.456, 0.406 };

    /// <summary>Per-channel standard deviation (R, G, B).</summary>
    public static IReadOnlyList<double> Std { get; } = new[] { 0.229, 0.224, 0.225 };

    /// <summary>(x − mean[c]) / std[c] for RGB in [0, 1], <paramref name="rgb"/> <c>[B, 3, H, W]</c> or <c>[3, H, W]</c>.</summary>
    /// <exception cref="ArgumentException">The channel axis is not 3 wide.</exception>
    public static Tensor Normalize(Tensor rgb)
    {
        if ((rgb.dim() != 4 && rgb.dim() != 3) || rgb.shape[^3] != 3)
            throw new ArgumentException($"rgb: expected [B, 3, H, W] or [3, H, W], found [{string.Join(", ", rgb.shape)}].", nameof(rgb));
        using var scope = torch.NewDisposeScope();
        var mean = torch.tensor(Mean.ToArray(), ScalarType.Float64).to(rgb.dtype).to(rgb.device).reshape(3, 1, 1);
        var std = torch.tensor(Std.ToArray(), ScalarType.Float64).to(rgb.dtype).to(rgb.device).reshape(3, 1, 1);
        return ((rgb - mean) / std).MoveToOuterDisposeScope();
    }
}

/// <summary>How <see cref="ImagePreprocessor"/> resizes the crop to 518².</summary>
public enum ImageResampler
{
    /// <summary>PIL's fixed-point Lanczos-3 with premultiplied alpha, reproduced to the byte (TRELLIS's own resize).</summary>
    Pil = 0,

    /// <summary>ImageSharp's floating-point Lanczos-3 (premultiplied alpha): same kernel, different rounding.</summary>
    ImageSharpLanczos3 = 1,
}

/// <summary>Settings of <see cref="ImagePreprocessor"/> (defaults: TRELLIS's <c>preprocess_image</c>).</summary>
public sealed record ImagePreprocessOptions
{
    /// <summary>Output side in pixels (518: DINOv2-L/14's native 37 × 37 grid).</summary>
    public int Size { get; init; } = 518;

    /// <summary>Pixels with alpha &gt; AlphaThreshold·255 define the object's bounding box (0.8).</summary>
    public double AlphaThreshold { get; init; } = 0.8;

    /// <summary>The square crop's side as a multiple of the bounding box's longer side (1.2).</summary>
    public double Margin { get; init; } = 1.2;

    /// <summary>Largest accepted input (width·height), checked from the file header before decoding (64 Mpx).</summary>
    public long MaxPixels { get; init; } = 64L * 1024 * 1024;

    /// <summary>The Lanczos resize (default <see cref="ImageResampler.Pil"/>: byte-exact with TRELLIS's PIL).</summary>
    public ImageResampler Resampler { get; init; } = ImageResampler.Pil;

    /// <summary>
    /// Background removal for images without transparency (TRELLIS runs rembg's U²-Net); null: such images are rejected
    /// with a message saying what to pass.
    /// </summary>
    public IImageMatting? Matting { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid setting.</summary>
    public void Validate()
    {
        if (Size < 14) throw new ArgumentException($"Size must be at least 14, got {Size}.", nameof(Size));
        if (!(AlphaThreshold >= 0 && AlphaThreshold < 1)) throw new ArgumentException($"AlphaThreshold must be in [0, 1), got {AlphaThreshold}.", nameof(AlphaThreshold));
        if (!(Margin >= 1)) throw new ArgumentException($"Margin must be >= 1, got {Margin}.", nameof(Margin));
        if (MaxPixels < 1) throw new ArgumentException($"MaxPixels must be positive, got {MaxPixels}.", nameof(MaxPixels));
    }
}

/// <summary>
/// TRELLIS's image preprocessing (<c>TrellisImageTo3DPipeline.preprocess_image</c> + the first half of
/// <c>encode_image</c>) with ImageSharp: RGBA input (an image without transparency goes through
/// <see cref="ImagePreprocessOptions.Matting"/>) → bounding box of alpha &gt; 0.8·255 → square crop of int(1.2 × its
/// longer side) around the box centre (transparent outside the image) → resize to 518² with PIL's Lanczos-3 (alpha
/// premultiplied while resampling; <see cref="ImageResampler"/>) → RGB × alpha, truncated to bytes → [0, 1] → ImageNet
/// normalisation. ImageSharp decodes the file; docs/image-conditioning.md gives the measured difference to TRELLIS.
/// </summary>
public sealed class ImagePreprocessor
{
    /// <summary>Creates a preprocessor (TRELLIS's settings by default).</summary>
    public ImagePreprocessor(ImagePreprocessOptions? options = null)
    {
        Options = options ?? new ImagePreprocessOptions();
        Options.Validate();
    }

    /// <summary>The settings.</summary>
    public ImagePreprocessOptions Options { get; }

    /// <summary>
    /// Decodes an image file as RGBA, checking its header first: not an image, an unsupported format, a corrupt file or
    /// more than <see cref="ImagePreprocessOptions.MaxPixels"/> pixels give an <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    public Image<Rgba32> Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"image '{path}' does not exist.", path);
        try
        {
            var info = Image.Identify(path)
                ?? throw new InvalidDataException($"'{path}' is not an image in a format ImageSharp reads (PNG, JPEG, BMP, GIF, TGA, TIFF, WebP).");
            long pixels = (long)info.Width * info.Height;
            if (pixels > Options.MaxPixels)
                throw new InvalidDataException($"image '{path}' is {info.Width} x {info.Height} = {pixels} pixels, more than the limit of {Options.MaxPixels}; downscale it first.");
            return Image.Load<Rgba32>(path);
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or ImageFormatException or NotSupportedException)
        {
            throw new InvalidDataException($"'{path}' is not a readable image: {e.Message}", e);
        }
    }

    /// <summary>
    /// TRELLIS's <c>preprocess_image</c>: returns the <see cref="ImagePreprocessOptions.Size"/>² RGB image (premultiplied
    /// by alpha, black background) the condition model sees. <paramref name="source"/> names the image in messages.
    /// </summary>
    /// <exception cref="InvalidDataException">No pixel is opaque enough to define the object, or the image is fully
    /// opaque and no matting model is set (the message says what to pass).</exception>
    public Image<Rgb24> Preprocess(Image<Rgba32> image, string source = "image")
    {
        ArgumentNullException.ThrowIfNull(image);
        Image<Rgba32>? matted = null;
        try
        {
            var rgba = image;
            if (IsFullyOpaque(image))
            {
                if (Options.Matting is null)
                    throw new InvalidDataException(
                        $"{source} has no transparency, so the object must be cut out first (TRELLIS uses rembg's U²-Net): pass an ONNX matting model " +
                        "(ImagePreprocessOptions.Matting = new OnnxMatting(\"u2net.onnx\"); TrellisGenerate --matting u2net.onnx) or an RGBA image with a transparent background.");
                // TRELLIS: convert('RGB'), downscale (LANCZOS) so the longer side is at most 1024, then rembg.
                int longer = Math.Max(image.Width, image.Height);
                double scale = Math.Min(1.0, 1024.0 / longer);
                if (scale < 1)
                {
                    using var small = PilLanczosResampler.Resize(image, (int)(image.Width * scale), (int)(image.Height * scale), opaqueRgb: true);
                    matted = Options.Matting.RemoveBackground(small);
                }
                else matted = Options.Matting.RemoveBackground(image);
                rgba = matted;
            }
            var (x0, y0, x1, y1) = AlphaBoundingBox(rgba, source);
            using var crop = CropSquare(rgba, x0, y0, x1, y1);
            if (Options.Resampler == ImageResampler.Pil)
            {
                using var resized = PilLanczosResampler.Resize(crop, Options.Size, Options.Size);
                return Premultiply(resized);
            }
            crop.Mutate(c => c.Resize(new ResizeOptions
            {
                Size = new SixLabors.ImageSharp.Size(Options.Size, Options.Size),
                Sampler = KnownResamplers.Lanczos3,
                Mode = ResizeMode.Stretch,
                PremultiplyAlpha = true,
            }));
            return Premultiply(crop);
        }
        finally
        {
            matted?.Dispose();
        }
    }

    /// <summary>The model input for preprocessed images: <c>[N, 3, S, S]</c>, RGB / 255, ImageNet-normalised, in <paramref name="dtype"/>.</summary>
    public static Tensor ToTensor(IReadOnlyList<Image<Rgb24>> images, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("at least one image is needed.", nameof(images));
        int w = images[0].Width, h = images[0].Height;
        var data = new float[images.Count * 3 * h * w];
        for (int n = 0; n < images.Count; n++)
        {
            var img = images[n];
            if (img.Width != w || img.Height != h)
                throw new ArgumentException($"images[{n}] is {img.Width} x {img.Height}, images[0] is {w} x {h}.", nameof(images));
            int baseIdx = n * 3 * h * w;
            img.ProcessPixelRows(acc =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = acc.GetRowSpan(y);
                    for (int x = 0; x < w; x++)
                    {
                        // TRELLIS: np.array(image).astype(np.float32) / 255
                        data[baseIdx + y * w + x] = row[x].R / 255f;
                        data[baseIdx + h * w + y * w + x] = row[x].G / 255f;
                        data[baseIdx + 2 * h * w + y * w + x] = row[x].B / 255f;
                    }
                }
            });
        }
        using var scope = torch.NewDisposeScope();
        var t = torch.tensor(data, new long[] { images.Count, 3, h, w }, ScalarType.Float32).to(dtype);
        if (device is not null) t = t.to(device);
        return ImageNet.Normalize(t).MoveToOuterDisposeScope();
    }

    private static bool IsFullyOpaque(Image<Rgba32> image)
    {
        bool opaque = true;
        image.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < acc.Height && opaque; y++)
                foreach (var p in acc.GetRowSpan(y))
                    if (p.A != 255) { opaque = false; break; }
        });
        return opaque;
    }

    private (int X0, int Y0, int X1, int Y1) AlphaBoundingBox(Image<Rgba32> image, string source)
    {
        double threshold = Options.AlphaThreshold * 255;
        int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
        image.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < acc.Height; y++)
            {
                var row = acc.GetRowSpan(y);
                for (int x = 0; x < row.Length; x++)
                {
                    if (row[x].A <= threshold) continue;
                    if (x < x0) x0 = x;
                    if (x > x1) x1 = x;
                    if (y < y0) y0 = y;
                    if (y > y1) y1 = y;
                }
            }
        });
        if (x1 < 0)
            throw new InvalidDataException($"{source} has no pixel with alpha > {threshold:0.#} ({Options.AlphaThreshold:P0} opaque), so there is no object to crop.");
        return (x0, y0, x1, y1);
    }

    /// <summary>TRELLIS's square crop box around the alpha bounding box, cropped as PIL does (corners rounded half to even).</summary>
    private Image<Rgba32> CropSquare(Image<Rgba32> image, int x0, int y0, int x1, int y1)
    {
        double cx = (x0 + x1) / 2.0, cy = (y0 + y1) / 2.0;
        int size = (int)(Math.Max(x1 - x0, y1 - y0) * Options.Margin);
        int half = size / 2;
        return Crop(image, cx - half, cy - half, cx + half, cy + half);
    }

    /// <summary>
    /// PIL's <c>Image.crop(box)</c>: the box corners are rounded as Python's <c>round</c> (half to even), pixels outside
    /// the image are transparent black. Returns a new image of (right − left) × (bottom − top) pixels (at least 1 × 1).
    /// </summary>
    public static Image<Rgba32> Crop(Image<Rgba32> image, double left, double top, double right, double bottom)
    {
        ArgumentNullException.ThrowIfNull(image);
        return CropRounded(image, (int)Math.Round(left, MidpointRounding.ToEven), (int)Math.Round(top, MidpointRounding.ToEven),
            (int)Math.Round(right, MidpointRounding.ToEven), (int)Math.Round(bottom, MidpointRounding.ToEven));
    }

    /// <summary>PIL's <c>Image.resize(size, LANCZOS)</c> of an RGBA image, byte for byte (premultiplied alpha, fixed point).</summary>
    public static Image<Rgba32> ResizeLanczos(Image<Rgba32> image, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (width < 1 || height < 1) throw new ArgumentException($"target size must be positive, got {width} x {height}.");
        return PilLanczosResampler.Resize(image, width, height);
    }

    private static Image<Rgba32> CropRounded(Image<Rgba32> image, int left, int top, int right, int bottom)
    {
        int w = Math.Max(right - left, 1), h = Math.Max(bottom - top, 1);
        var crop = new Image<Rgba32>(w, h);   // transparent black
        image.ProcessPixelRows(crop, (src, dst) =>
        {
            for (int y = 0; y < h; y++)
            {
                int sy = top + y;
                if (sy < 0 || sy >= src.Height) continue;
                var s = src.GetRowSpan(sy);
                var d = dst.GetRowSpan(y);
                for (int x = 0; x < w; x++)
                {
                    int sx = left + x;
                    if (sx >= 0 && sx < s.Length) d[x] = s[sx];
                }
            }
        });
        return crop;
    }

    private static Image<Rgb24> Premultiply(Image<Rgba32> image)
    {
        var result = new Image<Rgb24>(image.Width, image.Height);
        image.ProcessPixelRows(result, (src, dst) =>
        {
            for (int y = 0; y < src.Height; y++)
            {
                var s = src.GetRowSpan(y);
                var d = dst.GetRowSpan(y);
                for (int x = 0; x < s.Length; x++)
                {
                    // TRELLIS: (rgb/255 * a/255 * 255).astype(uint8) in float32: truncation.
                    float a = s[x].A / 255f;
                    d[x] = new Rgb24(Mul(s[x].R, a), Mul(s[x].G, a), Mul(s[x].B, a));
                }
            }
        });
        return result;
    }

    private static byte Mul(byte c, float a)
    {
        float v = c / 255f * a;
        v *= 255f;
        return (byte)Math.Clamp((int)v, 0, 255);
    }
}
