using MdtDist.Core.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Settings of <see cref="PreviewImages.Grid"/>.</summary>
public sealed record GridOptions
{
    /// <summary>Pixels between cells and around the grid.</summary>
    public int Padding { get; init; } = 4;

    /// <summary>Integer magnification of the built-in 5×7 pixel font (2: glyphs of 10×14 pixels).</summary>
    public int LabelScale { get; init; } = 2;

    /// <summary>Colour behind the cells and labels.</summary>
    public Rgb24 Background { get; init; } = new(255, 255, 255);

    /// <summary>Label colour.</summary>
    public Rgb24 LabelColor { get; init; } = new(0, 0, 0);
}

/// <summary>
/// Image output for previews with SixLabors.ImageSharp: tensor → 8-bit image, PNG stills, labelled picture grids and
/// animated GIF turntables. Every file is written through a temporary file and a rename, so a failure never leaves a
/// partial file.
/// </summary>
public static class PreviewImages
{
    /// <summary>
    /// An <c>[H, W, 3]</c> (or <c>[3, H, W]</c> is refused: pass HWC) floating image in [0, 1] as an 8-bit RGB image with
    /// TRELLIS's conversion <c>clip(x·255, 0, 255)</c> truncated to an integer; NaN becomes 0.
    /// </summary>
    /// <exception cref="ArgumentException">The tensor is not a floating <c>[H, W, 3]</c> image with H, W ≥ 1.</exception>
    public static Image<Rgb24> ToImage(Tensor image)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image.dim() != 3 || image.shape[2] != 3 || image.shape[0] < 1 || image.shape[1] < 1)
            throw new ArgumentException($"image must be [H, W, 3] with H, W >= 1; found [{string.Join(", ", image.shape)}]", nameof(image));
        if (!image.is_floating_point()) throw new ArgumentException($"image must be a floating tensor; found {image.dtype}", nameof(image));
        byte[] bytes;
        using (var scope = torch.NewDisposeScope())
        {
            var x = torch.nan_to_num(image.to(ScalarType.Float64).cpu(), 0.0, 1.0, 0.0);
            bytes = (x * 255).clamp(0, 255).to(ScalarType.Byte).contiguous().data<byte>().ToArray();
        }
        return Image.LoadPixelData<Rgb24>(bytes, (int)image.shape[1], (int)image.shape[0]);
    }

    /// <summary>Writes <paramref name="image"/> as a PNG file (atomically); creates the folder if needed.</summary>
    public static void SavePng(Image image, string path)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentException.ThrowIfNullOrEmpty(path);
        AtomicFile.Write(path, s => image.Save(s, new PngEncoder()));
    }

    /// <summary>Writes an <c>[H, W, 3]</c> image tensor as a PNG file (see <see cref="ToImage"/>).</summary>
    public static void SavePng(Tensor image, string path)
    {
        using var img = ToImage(image);
        SavePng(img, path);
    }

    /// <summary>
    /// Lays <paramref name="images"/> out in rows of <paramref name="columns"/> cells (row-major), each cell the size of the
    /// largest image with the image centred, and writes <paramref name="labels"/> (null or empty entries: none) under the
    /// cells with a built-in 5×7 pixel font (letters are drawn upper-case; characters it lacks are drawn as '?').
    /// </summary>
    /// <exception cref="ArgumentException">No images, <paramref name="columns"/> &lt; 1, or more labels than images.</exception>
    public static Image<Rgb24> Grid(IReadOnlyList<Image<Rgb24>> images, int columns, IReadOnlyList<string?>? labels = null, GridOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("images must hold at least one image", nameof(images));
        if (images.Any(i => i is null)) throw new ArgumentException("images must not contain null", nameof(images));
        if (columns < 1) throw new ArgumentException($"columns must be >= 1; found {columns}", nameof(columns));
        if (labels is not null && labels.Count > images.Count)
            throw new ArgumentException($"labels ({labels.Count}) must not outnumber images ({images.Count})", nameof(labels));
        options ??= new GridOptions();
        if (options.Padding < 0) throw new ArgumentException($"Padding must be >= 0; found {options.Padding}", nameof(options));
        if (options.LabelScale < 1) throw new ArgumentException($"LabelScale must be >= 1; found {options.LabelScale}", nameof(options));

        columns = Math.Min(columns, images.Count);
        int rows = (images.Count + columns - 1) / columns;
        int cellW = images.Max(i => i.Width), cellH = images.Max(i => i.Height);
        bool anyLabel = labels is not null && labels.Any(l => !string.IsNullOrEmpty(l));
        int labelH = anyLabel ? (BitmapFont.GlyphHeight + 2) * options.LabelScale : 0;
        int pad = options.Padding;
        int width = columns * cellW + (columns + 1) * pad, height = rows * (cellH + labelH) + (rows + 1) * pad;
        var grid = new Image<Rgb24>(width, height, options.Background);
        for (int n = 0; n < images.Count; n++)
        {
            int r = n / columns, c = n % columns;
            int x0 = pad + c * (cellW + pad), y0 = pad + r * (cellH + labelH + pad);
            var img = images[n];
            int ox = x0 + (cellW - img.Width) / 2, oy = y0 + (cellH - img.Height) / 2;
            for (int y = 0; y < img.Height; y++)
                for (int x = 0; x < img.Width; x++) grid[ox + x, oy + y] = img[x, y];
            var label = labels is not null && n < labels.Count ? labels[n] : null;
            if (!string.IsNullOrEmpty(label))
                BitmapFont.Draw(grid, label, x0, y0 + cellH + options.LabelScale, cellW, options.LabelScale, options.LabelColor);
        }
        return grid;
    }

    /// <summary>
    /// Writes <paramref name="frames"/> (all the same size) as a looping animated GIF (atomically), each frame shown for
    /// <paramref name="frameDelayMs"/> milliseconds (GIF stores hundredths of a second; at least 10 ms). Each frame gets
    /// its own palette.
    /// </summary>
    /// <exception cref="ArgumentException">No frames, frames of different sizes, or a non-positive delay.</exception>
    public static void SaveGif(IReadOnlyList<Image<Rgb24>> frames, string path, int frameDelayMs = 40)
    {
        ArgumentNullException.ThrowIfNull(frames);
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (frames.Count == 0) throw new ArgumentException("frames must hold at least one image", nameof(frames));
        if (frameDelayMs < 1) throw new ArgumentException($"frameDelayMs must be >= 1; found {frameDelayMs}", nameof(frameDelayMs));
        int w = frames[0].Width, h = frames[0].Height;
        for (int i = 1; i < frames.Count; i++)
            if (frames[i].Width != w || frames[i].Height != h)
                throw new ArgumentException($"all frames must be {w}×{h} (the first frame's size); frame {i} is {frames[i].Width}×{frames[i].Height}", nameof(frames));
        int delay = Math.Max(1, (int)Math.Round(frameDelayMs / 10.0));
        using var gif = frames[0].Clone();
        gif.Metadata.GetGifMetadata().RepeatCount = 0;
        gif.Frames.RootFrame.Metadata.GetGifMetadata().FrameDelay = delay;
        for (int i = 1; i < frames.Count; i++)
        {
            var f = gif.Frames.AddFrame(frames[i].Frames.RootFrame);
            f.Metadata.GetGifMetadata().FrameDelay = delay;
        }
        AtomicFile.Write(path, s => gif.Save(s, new GifEncoder { ColorTableMode = GifColorTableMode.Local }));
    }
}
