using MdtDist.Trellis.Conditioning;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Data;

/// <summary>
/// The condition image of a training example as TRELLIS's <c>ImageConditionedMixin</c> makes it from a rendered view:
/// bounding box of the pixels with alpha &gt; 0, a square of 1.2 × its larger half-side around the box centre with
/// corners truncated to integers (Python's <c>int()</c>), PIL's crop (transparent outside), PIL's Lanczos resize of the
/// RGBA crop to <c>size</c>², then RGB / 255 multiplied by alpha / 255 in float (no 8-bit rounding, unlike inference's
/// <c>preprocess_image</c>).
/// </summary>
public static class TrellisConditionImages
{
    /// <summary>The training view of <paramref name="path"/>: float32 <c>[3, size, size]</c> in [0, 1], premultiplied.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">Not an image, or no pixel has alpha &gt; 0 (the message names the file).</exception>
    public static Tensor Load(string path, int size = 518)
    {
        if (size < 1) throw new ArgumentException($"size must be >= 1, got {size}.", nameof(size));
        using var image = new ImagePreprocessor().Load(path);
        int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
        bool anyTransparent = false;
        image.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < acc.Height; y++)
            {
                var row = acc.GetRowSpan(y);
                for (int x = 0; x < row.Length; x++)
                {
                    if (row[x].A != 255) anyTransparent = true;
                    if (row[x].A == 0) continue;
                    if (x < x0) x0 = x;
                    if (x > x1) x1 = x;
                    if (y < y0) y0 = y;
                    if (y > y1) y1 = y;
                }
            }
        });
        if (x1 < 0) throw new InvalidDataException($"condition view '{path}' has no pixel with alpha > 0: no object to crop.");
        if (!anyTransparent) throw new InvalidDataException($"condition view '{path}' has no transparency (TRELLIS's renders_cond views are RGBA renders with a transparent background).");
        double cx = (x0 + x1) / 2.0, cy = (y0 + y1) / 2.0;
        double hsize = Math.Max(x1 - x0, y1 - y0) / 2.0 * 1.2;
        // Python's int() truncates toward zero, as C#'s cast does; the corners are then integers, so PIL's rounding keeps them.
        using var crop = ImagePreprocessor.Crop(image, (int)(cx - hsize), (int)(cy - hsize), (int)(cx + hsize), (int)(cy + hsize));
        using var resized = ImagePreprocessor.ResizeLanczos(crop, size, size);
        var data = new float[3 * size * size];
        resized.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < size; y++)
            {
                var row = acc.GetRowSpan(y);
                for (int x = 0; x < size; x++)
                {
                    float a = row[x].A / 255f;
                    data[y * size + x] = row[x].R / 255f * a;
                    data[size * size + y * size + x] = row[x].G / 255f * a;
                    data[2 * size * size + y * size + x] = row[x].B / 255f * a;
                }
            }
        });
        return torch.tensor(data, new long[] { 3, size, size }, ScalarType.Float32);
    }
}
