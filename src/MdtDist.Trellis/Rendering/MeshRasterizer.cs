using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>How <see cref="MeshRasterizer"/> colours a covered pixel.</summary>
public enum MeshShading
{
    /// <summary>Vertex colour × (ambient + (1 − ambient)·|cos θ|), θ between the face normal and the ray to the camera (a headlight; two-sided).</summary>
    Lambert,

    /// <summary>Vertex colour as it is (no lighting).</summary>
    Unlit,

    /// <summary>World-space face normal mapped to <c>(n + 1) / 2</c>, as TRELLIS's mesh renderer's <c>normal</c> output.</summary>
    Normals,
}

/// <summary>Settings of <see cref="MeshRasterizer"/>; resolution, supersampling and clipping planes default to TRELLIS's mesh preview settings.</summary>
public sealed record MeshRenderOptions
{
    /// <summary>Output width and height in pixels (TRELLIS: 512).</summary>
    public int Resolution { get; init; } = 512;

    /// <summary>Supersampling factor: render at <c>Resolution·Ssaa</c> and average <c>Ssaa×Ssaa</c> blocks (TRELLIS: 4, with a bilinear antialiased resize; here a box filter).</summary>
    public int Ssaa { get; init; } = 2;

    /// <summary>Background RGB.</summary>
    public IReadOnlyList<double> Background { get; init; } = new[] { 0.0, 0.0, 0.0 };

    /// <summary>Lighting model.</summary>
    public MeshShading Shading { get; init; } = MeshShading.Lambert;

    /// <summary>Ambient share of <see cref="MeshShading.Lambert"/>, in [0, 1].</summary>
    public double Ambient { get; init; } = 0.3;

    /// <summary>Near clipping distance along the camera axis (TRELLIS's mesh renderer: 1).</summary>
    public double Near { get; init; } = 1.0;

    /// <summary>Far clipping distance along the camera axis (TRELLIS's mesh renderer: 100).</summary>
    public double Far { get; init; } = 100.0;

    /// <summary>Colour of a mesh without vertex colours.</summary>
    public IReadOnlyList<double> DefaultColor { get; init; } = new[] { 0.8, 0.8, 0.8 };

    /// <summary>Most threads the pixel loop uses (−1: as many as the thread pool gives). The output does not depend on it.</summary>
    public int MaxDegreeOfParallelism { get; init; } = -1;
}

/// <summary>
/// A software triangle rasteriser with a z-buffer: perspective-correct interpolation of vertex colours, flat face normals,
/// headlight Lambert shading, in TRELLIS's camera conventions (<see cref="TrellisCamera"/>).
/// </summary>
/// <remarks>
/// <para>Vertices go to camera space and to pixel coordinates (<see cref="TrellisCamera.Project"/>); a pixel centre is
/// covered by a triangle when its three edge functions have the sign of the triangle's area (edges included);
/// depth and colour are interpolated with perspective-correct barycentrics (<c>1/z</c> linear in screen space); a sample
/// is kept when its depth lies in [near, far] and is strictly nearer than what the z-buffer holds (so the first face in
/// index order wins ties). Faces with a vertex at or behind the camera plane (z ≤ 1e-9) are skipped rather than clipped;
/// with TRELLIS's cameras (radius 2, object inside the unit cube) none are. Faces of zero screen area (degenerate faces)
/// cover nothing. The image is cut into bands of rows rendered in parallel; each pixel sees faces in index order, so the
/// output does not depend on the thread count.</para>
/// </remarks>
public static class MeshRasterizer
{
    private const int Band = 8;

    /// <summary>
    /// Renders <paramref name="mesh"/> seen from <paramref name="camera"/>. An empty mesh gives the background (alpha and
    /// depth 0). Output dtype: float64 for a float64 mesh, float32 otherwise; device: the mesh's.
    /// </summary>
    /// <exception cref="ArgumentException">Options out of range.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public static RenderedImage Render(Mesh mesh, TrellisCamera camera, MeshRenderOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(camera);
        options ??= new MeshRenderOptions();
        RenderValidation.CheckCommon(options.Resolution, options.Ssaa, options.Background);
        if (options.DefaultColor is null || options.DefaultColor.Count != 3 || options.DefaultColor.Any(v => !double.IsFinite(v)))
            throw new ArgumentException("DefaultColor must hold 3 finite values (RGB)", nameof(options));
        if (!(options.Ambient >= 0 && options.Ambient <= 1))
            throw new ArgumentException($"Ambient must lie in [0, 1]; found {options.Ambient}", nameof(options));
        if (!(options.Near > 0) || !(options.Far > options.Near) || !double.IsFinite(options.Far))
            throw new ArgumentException($"need 0 < Near < Far < ∞; found Near {options.Near}, Far {options.Far}", nameof(options));
        if (options.MaxDegreeOfParallelism == 0 || options.MaxDegreeOfParallelism < -1)
            throw new ArgumentException($"MaxDegreeOfParallelism must be -1 or >= 1; found {options.MaxDegreeOfParallelism}", nameof(options));
        if (!Enum.IsDefined(options.Shading)) throw new ArgumentException($"unknown shading {options.Shading}", nameof(options));

        int size = options.Resolution * options.Ssaa;
        var outType = mesh.Vertices.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var device = mesh.Vertices.device;
        double[] verts, colors;
        long[] faces;
        using (var s = torch.NewDisposeScope())
        {
            verts = RenderValidation.HostArray<double>(mesh.Vertices.to(ScalarType.Float64));
            faces = RenderValidation.HostArray<long>(mesh.Faces);
            colors = mesh.Colors is null ? Array.Empty<double>() : RenderValidation.HostArray<double>(mesh.Colors.to(ScalarType.Float64));
        }
        var (color, cover, depth) = Rasterize(verts, faces, colors, camera, size, options, cancellationToken);

        using var scope = torch.NewDisposeScope();
        var c = torch.tensor(color, new long[] { size, size, 3 }, ScalarType.Float64);
        var a = torch.tensor(cover, new long[] { size, size, 1 }, ScalarType.Float64);
        var d = torch.tensor(depth, new long[] { size, size, 1 }, ScalarType.Float64);
        if (options.Ssaa > 1)
        {
            var ad = RenderValidation.Downsample(a, options.Ssaa);
            var dd = RenderValidation.Downsample(d * a, options.Ssaa);
            d = torch.where(ad > 0, dd / ad.clamp_min(1e-300), torch.zeros_like(dd));
            c = RenderValidation.Downsample(c, options.Ssaa);
            a = ad;
        }
        return new RenderedImage(c.to(outType, device).MoveToOuterDisposeScope(), a.squeeze(-1).to(outType, device).MoveToOuterDisposeScope(),
            d.squeeze(-1).to(outType, device).MoveToOuterDisposeScope());
    }

    /// <summary>The z-buffer pass on plain arrays: vertices V·3, faces F·3, colours V·3 or empty.</summary>
    internal static (double[] Color, double[] Cover, double[] Depth) Rasterize(double[] verts, long[] faces, double[] vcolors, TrellisCamera camera,
        int size, MeshRenderOptions options, CancellationToken ct)
    {
        int nv = verts.Length / 3, nf = faces.Length / 3;
        var bg = options.Background;
        var color = new double[size * size * 3];
        for (int i = 0; i < size * size; i++) { color[3 * i] = bg[0]; color[3 * i + 1] = bg[1]; color[3 * i + 2] = bg[2]; }
        var cover = new double[size * size];
        var depth = new double[size * size];
        if (nv == 0 || nf == 0) return (color, cover, depth);

        // Camera-space positions and pixel coordinates.
        var e = camera.Extrinsics;
        var cam = new double[nv * 3];
        var sx = new double[nv];
        var sy = new double[nv];
        for (int i = 0; i < nv; i++)
        {
            double x = verts[3 * i], y = verts[3 * i + 1], z = verts[3 * i + 2];
            double qx = e[0] * x + e[1] * y + e[2] * z + e[3], qy = e[4] * x + e[5] * y + e[6] * z + e[7], qz = e[8] * x + e[9] * y + e[10] * z + e[11];
            cam[3 * i] = qx; cam[3 * i + 1] = qy; cam[3 * i + 2] = qz;
            sx[i] = (camera.Fx * qx / qz + camera.Cx) * size - 0.5;
            sy[i] = (camera.Fy * qy / qz + camera.Cy) * size - 0.5;
        }

        // Per face: shading colour factor (or normal colour), row range; binned into bands.
        int bands = (size + Band - 1) / Band;
        var shade = new double[nf * 3];
        var faceRows = new (int Y0, int Y1)[nf];
        var bandCount = new int[bands + 1];
        for (int f = 0; f < nf; f++)
        {
            long i0 = faces[3 * f], i1 = faces[3 * f + 1], i2 = faces[3 * f + 2];
            faceRows[f] = (0, -1);
            if (cam[3 * i0 + 2] <= 1e-9 || cam[3 * i1 + 2] <= 1e-9 || cam[3 * i2 + 2] <= 1e-9) continue;
            double ymin = Math.Min(sy[i0], Math.Min(sy[i1], sy[i2])), ymax = Math.Max(sy[i0], Math.Max(sy[i1], sy[i2]));
            int y0 = Math.Max(0, (int)Math.Ceiling(ymin)), y1 = Math.Min(size - 1, (int)Math.Floor(ymax));
            if (y1 < y0) continue;
            faceRows[f] = (y0, y1);
            for (int b = y0 / Band; b <= y1 / Band; b++) bandCount[b + 1]++;
            FaceShade(f, i0, i1, i2, verts, cam, options, shade);
        }
        for (int b = 0; b < bands; b++) bandCount[b + 1] += bandCount[b];
        var bandFaces = new int[bandCount[bands]];
        var fill = bandCount[..bands].ToArray();
        for (int f = 0; f < nf; f++)
        {
            var (y0, y1) = faceRows[f];
            if (y1 < y0) continue;
            for (int b = y0 / Band; b <= y1 / Band; b++) bandFaces[fill[b]++] = f;
        }

        var dc = options.DefaultColor;
        bool hasColors = vcolors.Length == nv * 3;
        var zbuf = new double[size * size];
        Array.Fill(zbuf, double.PositiveInfinity);
        double near = options.Near, far = options.Far;
        int maxThreads = options.MaxDegreeOfParallelism;
        Parallel.For(0, bands, new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = maxThreads }, band =>
        {
            int rowStart = band * Band, rowEnd = Math.Min(size, rowStart + Band);
            for (int n = bandCount[band]; n < bandCount[band + 1]; n++)
            {
                int f = bandFaces[n];
                long i0 = faces[3 * f], i1 = faces[3 * f + 1], i2 = faces[3 * f + 2];
                double x0 = sx[i0], y0 = sy[i0], x1 = sx[i1], y1 = sy[i1], x2 = sx[i2], y2 = sy[i2];
                double area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0);
                if (area == 0 || !double.IsFinite(area)) continue;
                double invArea = 1.0 / area;
                double iz0 = 1 / cam[3 * i0 + 2], iz1 = 1 / cam[3 * i1 + 2], iz2 = 1 / cam[3 * i2 + 2];
                int r0 = Math.Max(rowStart, faceRows[f].Y0), r1 = Math.Min(rowEnd - 1, faceRows[f].Y1);
                int c0 = Math.Max(0, (int)Math.Ceiling(Math.Min(x0, Math.Min(x1, x2)))), c1 = Math.Min(size - 1, (int)Math.Floor(Math.Max(x0, Math.Max(x1, x2))));
                for (int row = r0; row <= r1; row++)
                    for (int col = c0; col <= c1; col++)
                    {
                        // Barycentric weights of the pixel centre (col, row): signed sub-areas over the full area.
                        double b0 = ((x1 - col) * (y2 - row) - (x2 - col) * (y1 - row)) * invArea;
                        double b1 = ((x2 - col) * (y0 - row) - (x0 - col) * (y2 - row)) * invArea;
                        double b2 = 1 - b0 - b1;
                        if (b0 < 0 || b1 < 0 || b2 < 0) continue;
                        double iz = b0 * iz0 + b1 * iz1 + b2 * iz2;
                        double z = 1 / iz;
                        int pix = row * size + col;
                        if (z < near || z > far || !(z < zbuf[pix])) continue;
                        zbuf[pix] = z;
                        depth[pix] = z;
                        cover[pix] = 1;
                        if (options.Shading == MeshShading.Normals)
                        {
                            color[3 * pix] = shade[3 * f]; color[3 * pix + 1] = shade[3 * f + 1]; color[3 * pix + 2] = shade[3 * f + 2];
                            continue;
                        }
                        double w0 = b0 * iz0 * z, w1 = b1 * iz1 * z, w2 = b2 * iz2 * z;
                        for (int ch = 0; ch < 3; ch++)
                        {
                            double v = hasColors ? w0 * vcolors[3 * i0 + ch] + w1 * vcolors[3 * i1 + ch] + w2 * vcolors[3 * i2 + ch] : dc[ch];
                            color[3 * pix + ch] = v * shade[3 * f + ch];
                        }
                    }
            }
        });
        return (color, cover, depth);
    }

    /// <summary>Per-face factor on the vertex colour (Lambert / unlit) or the normal colour itself (normals mode).</summary>
    private static void FaceShade(int f, long i0, long i1, long i2, double[] verts, double[] cam, MeshRenderOptions options, double[] shade)
    {
        double[] src = options.Shading == MeshShading.Normals ? verts : cam;
        double ax = src[3 * i1] - src[3 * i0], ay = src[3 * i1 + 1] - src[3 * i0 + 1], az = src[3 * i1 + 2] - src[3 * i0 + 2];
        double bx = src[3 * i2] - src[3 * i0], by = src[3 * i2 + 1] - src[3 * i0 + 1], bz = src[3 * i2 + 2] - src[3 * i0 + 2];
        double nx = ay * bz - az * by, ny = az * bx - ax * bz, nz = ax * by - ay * bx;
        double len = Math.Sqrt(nx * nx + ny * ny + nz * nz);
        if (len > 0) { nx /= len; ny /= len; nz /= len; }
        switch (options.Shading)
        {
            case MeshShading.Normals:
                shade[3 * f] = (nx + 1) / 2; shade[3 * f + 1] = (ny + 1) / 2; shade[3 * f + 2] = (nz + 1) / 2;
                break;
            case MeshShading.Unlit:
                shade[3 * f] = shade[3 * f + 1] = shade[3 * f + 2] = 1;
                break;
            default:
                // Headlight: the light sits at the camera; cos θ between the normal and the ray from the centroid to the camera.
                double cx = (cam[3 * i0] + cam[3 * i1] + cam[3 * i2]) / 3, cy = (cam[3 * i0 + 1] + cam[3 * i1 + 1] + cam[3 * i2 + 1]) / 3,
                    cz = (cam[3 * i0 + 2] + cam[3 * i1 + 2] + cam[3 * i2 + 2]) / 3;
                double cl = Math.Sqrt(cx * cx + cy * cy + cz * cz);
                double cos = cl > 0 ? Math.Abs(nx * cx + ny * cy + nz * cz) / cl : 1;
                double k = options.Ambient + (1 - options.Ambient) * cos;
                shade[3 * f] = shade[3 * f + 1] = shade[3 * f + 2] = k;
                break;
        }
    }
}
