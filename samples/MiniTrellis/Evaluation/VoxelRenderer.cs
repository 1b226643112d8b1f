using System.Globalization;
using System.Text;
using MiniTrellis.Data;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MiniTrellis.Evaluation;

/// <summary>
/// A minimal software renderer of coloured voxels: orthographic view from above-front-right, every voxel drawn as a
/// shaded square with a depth test. Small on purpose: it makes the picture grid of the main job.
/// </summary>
public static class VoxelRenderer
{
    private static readonly Rgba32 Background = new(245, 245, 242, 255);

    /// <summary>Renders voxels ((x, y, z) triples, y up) with RGB colours (3 floats each, or empty: grey) into a square image of <paramref name="size"/> pixels.</summary>
    public static Image<Rgba32> Render(int[] voxels, float[] colors, int size = 96)
    {
        var img = new Image<Rgba32>(size, size, Background);
        Draw(img, 0, 0, size, voxels, colors);
        return img;
    }

    /// <summary>Draws into the square cell of <paramref name="size"/> pixels at (<paramref name="ox"/>, <paramref name="oy"/>) of <paramref name="img"/>.</summary>
    public static void Draw(Image<Rgba32> img, int ox, int oy, int size, int[] voxels, float[] colors)
    {
        const double yaw = 0.7, pitch = 0.5;
        double r = ShapeDistribution.Resolution, half = r / 2;
        double scale = size / (r * 1.35);
        var depth = new double[size * size];
        Array.Fill(depth, double.NegativeInfinity);
        int n = voxels.Length / 3;
        double cy = Math.Cos(yaw), sy = Math.Sin(yaw), cp = Math.Cos(pitch), sp = Math.Sin(pitch);
        int rad = Math.Max(1, (int)Math.Ceiling(scale * 0.75));
        for (int i = 0; i < n; i++)
        {
            double x = voxels[3 * i] + 0.5 - half, y = voxels[3 * i + 1] + 0.5 - half, z = voxels[3 * i + 2] + 0.5 - half;
            double x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
            double y2 = cp * y - sp * z1, z2 = sp * y + cp * z1; // z2: towards the viewer
            int px = (int)Math.Round(size / 2.0 + x1 * scale), py = (int)Math.Round(size / 2.0 - y2 * scale);
            double shade = 0.6 + 0.4 * (z2 + half) / r;
            float red = colors.Length == voxels.Length ? colors[3 * i] : 0.6f;
            float green = colors.Length == voxels.Length ? colors[3 * i + 1] : 0.6f;
            float blue = colors.Length == voxels.Length ? colors[3 * i + 2] : 0.6f;
            var c = new Rgba32((byte)Math.Clamp(red * shade * 255, 0, 255), (byte)Math.Clamp(green * shade * 255, 0, 255), (byte)Math.Clamp(blue * shade * 255, 0, 255), 255);
            for (int dy = -rad; dy <= rad; dy++)
                for (int dx = -rad; dx <= rad; dx++)
                {
                    int qx = px + dx, qy = py + dy;
                    if (qx < 0 || qy < 0 || qx >= size || qy >= size) continue;
                    int k = qy * size + qx;
                    if (z2 <= depth[k]) continue;
                    depth[k] = z2;
                    img[ox + qx, oy + qy] = c;
                }
        }
    }

    /// <summary>
    /// A picture grid: one row per entry of <paramref name="rows"/>, one column per shape in the row (the same seeds and
    /// classes in every row), with a thin separator.
    /// </summary>
    public static Image<Rgba32> Grid(IReadOnlyList<IReadOnlyList<(int[] Voxels, float[] Colors)>> rows, int cell = 96)
    {
        int cols = rows.Max(r => r.Count);
        var img = new Image<Rgba32>(cols * cell, rows.Count * cell, new Rgba32(200, 200, 200, 255));
        for (int r = 0; r < rows.Count; r++)
            for (int c = 0; c < rows[r].Count; c++)
            {
                var tile = new Image<Rgba32>(cell - 2, cell - 2, Background);
                Draw(tile, 0, 0, cell - 2, rows[r][c].Voxels, rows[r][c].Colors);
                for (int y = 0; y < cell - 2; y++)
                    for (int x = 0; x < cell - 2; x++)
                        img[c * cell + 1 + x, r * cell + 1 + y] = tile[x, y];
                tile.Dispose();
            }
        return img;
    }
}

/// <summary>Writes coloured point sets as standard ASCII .ply (x, y, z in the unit cube; red, green, blue as bytes).</summary>
public static class PointPly
{
    /// <summary>Writes the voxel centres of <paramref name="voxels"/> with their colours (grey when none) to <paramref name="path"/> atomically.</summary>
    public static void Save(string path, int[] voxels, float[] colors)
    {
        var sb = new StringBuilder();
        int n = voxels.Length / 3;
        sb.Append("ply\nformat ascii 1.0\nelement vertex ").Append(n.ToString(CultureInfo.InvariantCulture))
          .Append("\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n");
        for (int i = 0; i < n; i++)
        {
            for (int k = 0; k < 3; k++)
                sb.Append(((voxels[3 * i + k] + 0.5) / ShapeDistribution.Resolution).ToString("R", CultureInfo.InvariantCulture)).Append(' ');
            for (int k = 0; k < 3; k++)
            {
                float v = colors.Length == voxels.Length ? colors[3 * i + k] : 0.6f;
                sb.Append(((int)Math.Round(Math.Clamp(v, 0, 1) * 255)).ToString(CultureInfo.InvariantCulture)).Append(k < 2 ? ' ' : '\n');
            }
        }
        Model.MiniTrellisModels.WriteTextAtomically(path, sb.ToString());
    }
}
