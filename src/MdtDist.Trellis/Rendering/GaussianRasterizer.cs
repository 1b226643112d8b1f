using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Settings of <see cref="GaussianRasterizer"/>; the defaults are TRELLIS's preview settings (<c>render_utils.get_renderer</c>).</summary>
/// <remarks>TRELLIS also sets near 0.8 and far 1.6; its rasteriser uses them only in the depth row of the projection
/// matrix, which moves no pixel (it culls at camera depth ≤ 0.2), so they are not options here.</remarks>
public sealed record GaussianRenderOptions
{
    /// <summary>Output width and height in pixels (TRELLIS: 512).</summary>
    public int Resolution { get; init; } = 512;

    /// <summary>Background RGB, composited behind the Gaussians (TRELLIS: black).</summary>
    public IReadOnlyList<double> Background { get; init; } = new[] { 0.0, 0.0, 0.0 };

    /// <summary>The screen-space (2D) filter variance in pixels² added to every projected covariance (TRELLIS's <c>kernel_size</c>: 0.1, mip-splatting's rasteriser).</summary>
    public double KernelSize { get; init; } = 0.1;

    /// <summary>Factor on every scale (TRELLIS: 1).</summary>
    public double ScaleModifier { get; init; } = 1.0;

    /// <summary>Supersampling factor: render at <c>Resolution·Ssaa</c> and average <c>Ssaa×Ssaa</c> blocks (TRELLIS: 1 for Gaussians).</summary>
    public int Ssaa { get; init; } = 1;

    /// <summary>Most threads the pixel loop uses (−1: as many as the thread pool gives). The output does not depend on it.</summary>
    public int MaxDegreeOfParallelism { get; init; } = -1;
}

/// <summary>
/// A software 3D Gaussian-splatting rasteriser with the arithmetic of the CUDA rasteriser TRELLIS renders with
/// (mip-splatting's <c>diff-gaussian-rasterization</c>, SH degree 0): EWA projection of each 3D covariance, a 2D filter
/// with opacity compensation, 16×16 tiles, depth-sorted front-to-back alpha compositing with early termination.
/// </summary>
/// <remarks>
/// <para>Per Gaussian (activations by the <see cref="Gaussians"/> getters in TorchSharp, then float64 loops on the host): world mean <c>μ</c>, scales <c>s</c>,
/// unit quaternion <c>q</c> and opacity <c>o</c> from the <see cref="Gaussians"/> getters (TRELLIS's activations, its 3D
/// filter included); <c>Σ = R(q)·diag(s²)·R(q)ᵀ</c>; camera point <c>t = R_v·μ + t_v</c>, culled when <c>t_z ≤ 0.2</c>;
/// Jacobian <c>J = [[F_x/t_z, 0, −F_x·t̂_x/t_z²], [0, F_y/t_z, −F_y·t̂_y/t_z²]]</c> with <c>F_x = W·f_x</c> and
/// <c>t̂_x/t_z</c> clamped to ±1.3·tan(fov_x/2); <c>Σ' = J·R_v·Σ·R_vᵀ·Jᵀ</c>; opacity × <c>sqrt(det Σ' / det(Σ' + kI))</c>
/// (0 when either determinant is ≤ 1e-6), then <c>Σ' += kI</c>; footprint radius <c>ceil(3·sqrt(λ_max))</c> pixels;
/// colour <c>max(0, C0·f_dc + 0.5)</c>.</para>
/// <para>Per pixel (C#, parallel over tiles, each pixel independent, so the output does not depend on the thread count):
/// the Gaussians whose footprint rectangle touches the pixel's tile, in increasing depth (ties by index);
/// <c>α = min(0.99, o·exp(−½·dᵀΣ'⁻¹d))</c>, skipped when below 1/255; compositing stops before the Gaussian that would
/// take the transmittance T below 1e-4; output <c>C + T·background</c>. The CUDA kernel computes in float32, this one
/// in float64, so the two agree to float32 rounding, not bit for bit.</para>
/// </remarks>
public static class GaussianRasterizer
{
    private const int Block = 16;

    /// <summary>
    /// Renders <paramref name="gaussians"/> seen from <paramref name="camera"/>. An empty set (or one entirely culled) gives
    /// the background. Output dtype: float64 for float64 Gaussians, float32 otherwise; device: the Gaussians'.
    /// </summary>
    /// <exception cref="ArgumentException">Options out of range, or a Gaussian with a NaN/infinite parameter (named with its row).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public static RenderedImage Render(Gaussians gaussians, TrellisCamera camera, GaussianRenderOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(gaussians);
        ArgumentNullException.ThrowIfNull(camera);
        options ??= new GaussianRenderOptions();
        RenderValidation.CheckCommon(options.Resolution, options.Ssaa, options.Background);
        if (!(options.KernelSize >= 0) || !double.IsFinite(options.KernelSize))
            throw new ArgumentException($"KernelSize must be a finite value >= 0; found {options.KernelSize}", nameof(options));
        if (options.MaxDegreeOfParallelism == 0 || options.MaxDegreeOfParallelism < -1)
            throw new ArgumentException($"MaxDegreeOfParallelism must be -1 or >= 1; found {options.MaxDegreeOfParallelism}", nameof(options));
        if (!(options.ScaleModifier > 0) || !double.IsFinite(options.ScaleModifier))
            throw new ArgumentException($"ScaleModifier must be a finite value > 0; found {options.ScaleModifier}", nameof(options));

        int size = options.Resolution * options.Ssaa;
        var outType = gaussians.HasParameters && gaussians.Xyz.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var device = gaussians.HasParameters ? gaussians.Xyz.device : torch.CPU;
        var splats = gaussians.Count == 0 ? new Projected(0) : Project(gaussians, camera, size, size, options);
        var (color, transmittance) = Composite(splats, size, size, options.Background, options.MaxDegreeOfParallelism, cancellationToken);

        using var scope = torch.NewDisposeScope();
        var c = torch.tensor(color, new long[] { size, size, 3 }, ScalarType.Float64);
        var a = 1.0 - torch.tensor(transmittance, new long[] { size, size }, ScalarType.Float64);
        if (options.Ssaa > 1) (c, a) = (RenderValidation.Downsample(c, options.Ssaa), RenderValidation.Downsample(a.unsqueeze(-1), options.Ssaa).squeeze(-1));
        return new RenderedImage(c.to(outType, device).MoveToOuterDisposeScope(), a.to(outType, device).MoveToOuterDisposeScope(), null);
    }

    /// <summary>The per-Gaussian screen-space data the compositing loop reads (visible Gaussians only, original order).</summary>
    internal sealed class Projected
    {
        public Projected(int n)
        {
            Index = new int[n]; X = new double[n]; Y = new double[n]; ConA = new double[n]; ConB = new double[n]; ConC = new double[n];
            Opacity = new double[n]; Rgb = new double[3 * n]; Depth = new double[n]; Radius = new int[n];
        }

        public int Count => Index.Length;
        public int[] Index;
        public double[] X, Y, ConA, ConB, ConC, Opacity, Rgb, Depth;
        public int[] Radius;
    }

    /// <summary>Projects every Gaussian (TorchSharp, float64) and keeps those the CUDA preprocessing keeps.</summary>
    internal static Projected Project(Gaussians g, TrellisCamera camera, int width, int height, GaussianRenderOptions options)
    {
        // Activations with the Gaussians' own getters (TorchSharp), then one host copy each.
        double[] xyz, scales, rot, opacity, features;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            var f64 = ScalarType.Float64;
            xyz = RenderValidation.HostArray<double>(g.GetXyz().to(f64));
            scales = RenderValidation.HostArray<double>(g.GetScaling().to(f64));
            rot = RenderValidation.HostArray<double>(g.GetRotation().to(f64));
            opacity = RenderValidation.HostArray<double>(g.GetOpacity().to(f64));
            features = RenderValidation.HostArray<double>(g.FeaturesDc.to(f64));
        }
        RenderValidation.CheckFiniteRows(xyz, 3, "Gaussian xyz", "gaussians");
        RenderValidation.CheckFiniteRows(scales, 3, "Gaussian scaling", "gaussians");
        RenderValidation.CheckFiniteRows(rot, 4, "Gaussian rotation", "gaussians");
        RenderValidation.CheckFiniteRows(opacity, 1, "Gaussian opacity", "gaussians");
        RenderValidation.CheckFiniteRows(features, 3, "Gaussian features_dc", "gaussians");

        int n = opacity.Length;
        var e = camera.Extrinsics;
        double tanX = 0.5 / camera.Fx, tanY = 0.5 / camera.Fy;
        double focalX = width * camera.Fx, focalY = height * camera.Fy;
        double k = options.KernelSize, mod = options.ScaleModifier;
        int gridX = (width + Block - 1) / Block, gridY = (height + Block - 1) / Block;
        var all = new Projected(n);
        var keep = new bool[n];
        // One independent computation per Gaussian (so the result does not depend on the partition); plain loops rather
        // than ~80 libtorch ops on [G] tensors, whose per-op thread synchronisation dominates on a loaded 2-core machine.
        Parallel.For(0, (n + 4095) / 4096, chunk =>
        {
            int end = Math.Min(n, (chunk + 1) * 4096);
            for (int i = chunk * 4096; i < end; i++)
            {
                double px = xyz[3 * i], py = xyz[3 * i + 1], pz = xyz[3 * i + 2];
                double tx = e[0] * px + e[1] * py + e[2] * pz + e[3];
                double ty = e[4] * px + e[5] * py + e[6] * pz + e[7];
                double tz = e[8] * px + e[9] * py + e[10] * pz + e[11];
                if (!(tz > 0.2)) continue;

                // R(q) for q = (w, x, y, z).
                double w = rot[4 * i], x = rot[4 * i + 1], y = rot[4 * i + 2], z = rot[4 * i + 3];
                double r00 = 1 - 2 * (y * y + z * z), r01 = 2 * (x * y - w * z), r02 = 2 * (x * z + w * y);
                double r10 = 2 * (x * y + w * z), r11 = 1 - 2 * (x * x + z * z), r12 = 2 * (y * z - w * x);
                double r20 = 2 * (x * z - w * y), r21 = 2 * (y * z + w * x), r22 = 1 - 2 * (x * x + y * y);
                double s0 = mod * scales[3 * i], s1 = mod * scales[3 * i + 1], s2 = mod * scales[3 * i + 2];

                // Rows of J·R_v with J = [[F_x/t_z, 0, −F_x·t̂_x/t_z²], [0, F_y/t_z, −F_y·t̂_y/t_z²]].
                double txc = Math.Min(1.3 * tanX, Math.Max(-1.3 * tanX, tx / tz)) * tz;
                double tyc = Math.Min(1.3 * tanY, Math.Max(-1.3 * tanY, ty / tz)) * tz;
                double ja = focalX / tz, jb = -(focalX * txc) / (tz * tz), jc = focalY / tz, jd = -(focalY * tyc) / (tz * tz);
                double a0 = ja * e[0] + jb * e[8], a1 = ja * e[1] + jb * e[9], a2 = ja * e[2] + jb * e[10];
                double b0 = jc * e[4] + jd * e[8], b1 = jc * e[5] + jd * e[9], b2 = jc * e[6] + jd * e[10];
                // M = J·R_v·R(q)·diag(s), Σ' = M·Mᵀ.
                double m00 = (a0 * r00 + a1 * r10 + a2 * r20) * s0, m01 = (a0 * r01 + a1 * r11 + a2 * r21) * s1, m02 = (a0 * r02 + a1 * r12 + a2 * r22) * s2;
                double m10 = (b0 * r00 + b1 * r10 + b2 * r20) * s0, m11 = (b0 * r01 + b1 * r11 + b2 * r21) * s1, m12 = (b0 * r02 + b1 * r12 + b2 * r22) * s2;
                double ca = m00 * m00 + m01 * m01 + m02 * m02, cb = m00 * m10 + m01 * m11 + m02 * m12, cc = m10 * m10 + m11 * m11 + m12 * m12;

                // mip-splatting's 2D filter with opacity compensation.
                double det0 = Math.Max(1e-6, ca * cc - cb * cb);
                double det1 = Math.Max(1e-6, (ca + k) * (cc + k) - cb * cb);
                double coef = det0 <= 1e-6 || det1 <= 1e-6 ? 0 : Math.Sqrt(det0 / (det1 + 1e-6) + 1e-6);
                ca += k; cc += k;
                double det = ca * cc - cb * cb;
                if (det == 0) continue;
                double mid = 0.5 * (ca + cc), root = Math.Sqrt(Math.Max(0.1, mid * mid - det));
                int radius = (int)Math.Ceiling(3 * Math.Sqrt(Math.Max(mid + root, mid - root)));

                // TRELLIS's projection matrix and ndc2Pix: ndc = clip / (w + 1e-7), pixel = ((ndc + 1)·S − 1) / 2.
                double ndcX = (2 * camera.Fx * tx + (2 * camera.Cx - 1) * tz) / (tz + 1e-7);
                double ndcY = (2 * camera.Fy * ty + (2 * camera.Cy - 1) * tz) / (tz + 1e-7);
                double sx = ((ndcX + 1) * width - 1) * 0.5, sy = ((ndcY + 1) * height - 1) * 0.5;
                var (x0, y0, x1, y1) = Rect(sx, sy, radius, gridX, gridY);
                if ((x1 - x0) * (y1 - y0) == 0) continue;

                keep[i] = true;
                all.Index[i] = i; all.X[i] = sx; all.Y[i] = sy;
                all.ConA[i] = cc / det; all.ConB[i] = -cb / det; all.ConC[i] = ca / det;
                all.Opacity[i] = opacity[i] * coef; all.Depth[i] = tz; all.Radius[i] = radius;
                for (int ch = 0; ch < 3; ch++) all.Rgb[3 * i + ch] = Math.Max(0, ShC0 * features[3 * i + ch] + 0.5);
            }
        });

        int kept = keep.Count(v => v);
        if (kept == n) return all;
        var p = new Projected(kept);
        for (int i = 0, j = 0; i < n; i++)
        {
            if (!keep[i]) continue;
            p.Index[j] = i; p.X[j] = all.X[i]; p.Y[j] = all.Y[i];
            p.ConA[j] = all.ConA[i]; p.ConB[j] = all.ConB[i]; p.ConC[j] = all.ConC[i];
            p.Opacity[j] = all.Opacity[i]; p.Depth[j] = all.Depth[i]; p.Radius[j] = all.Radius[i];
            p.Rgb[3 * j] = all.Rgb[3 * i]; p.Rgb[3 * j + 1] = all.Rgb[3 * i + 1]; p.Rgb[3 * j + 2] = all.Rgb[3 * i + 2];
            j++;
        }
        return p;
    }

    /// <summary>SH band-0 constant: colour = max(0, C0·f_dc + 0.5).</summary>
    internal const double ShC0 = 0.28209479177387814;

    /// <summary>The CUDA <c>getRect</c>: the tile rectangle [x0, x1) × [y0, y1) a footprint of the given radius touches.</summary>
    private static (int X0, int Y0, int X1, int Y1) Rect(double px, double py, int r, int gridX, int gridY) => (
        Math.Min(gridX, Math.Max(0, (int)((px - r) / Block))),
        Math.Min(gridY, Math.Max(0, (int)((py - r) / Block))),
        Math.Min(gridX, Math.Max(0, (int)((px + r + Block - 1) / Block))),
        Math.Min(gridY, Math.Max(0, (int)((py + r + Block - 1) / Block))));

    private struct Splat
    {
        public double X, Y, A, B, C, O, SkipBelow, R, G, Bl;
    }

    /// <summary>Tile binning, depth ordering and front-to-back compositing; returns colour (H·W·3) and final transmittance (H·W).</summary>
    internal static (double[] Color, double[] Transmittance) Composite(Projected p, int width, int height, IReadOnlyList<double> background, int maxThreads, CancellationToken ct)
    {
        int gridX = (width + Block - 1) / Block, gridY = (height + Block - 1) / Block, tiles = gridX * gridY;
        var order = Enumerable.Range(0, p.Count).ToArray();
        Array.Sort(order, (i, j) => p.Depth[i] != p.Depth[j] ? p.Depth[i].CompareTo(p.Depth[j]) : p.Index[i].CompareTo(p.Index[j]));
        var start = new long[tiles + 1];
        var rects = new (int X0, int Y0, int X1, int Y1)[p.Count];
        for (int j = 0; j < p.Count; j++)
        {
            rects[j] = Rect(p.X[j], p.Y[j], p.Radius[j], gridX, gridY);
            for (int ty = rects[j].Y0; ty < rects[j].Y1; ty++)
                for (int tx = rects[j].X0; tx < rects[j].X1; tx++) start[ty * gridX + tx + 1]++;
        }
        for (int t = 0; t < tiles; t++) start[t + 1] += start[t];
        var fill = new long[tiles];
        Array.Copy(start, fill, tiles);
        var list = new Splat[start[tiles]];
        foreach (int j in order)
        {
            var s = new Splat
            {
                X = p.X[j], Y = p.Y[j], A = p.ConA[j], B = p.ConB[j], C = p.ConC[j], O = p.Opacity[j],
                // α = o·exp(power) < 1/255 for every power below log(1/(255·o)); the margin keeps the shortcut exact.
                SkipBelow = p.Opacity[j] > 0 ? Math.Log(1.0 / (255.0 * p.Opacity[j])) - 1e-9 : double.PositiveInfinity,
                R = p.Rgb[3 * j], G = p.Rgb[3 * j + 1], Bl = p.Rgb[3 * j + 2],
            };
            var r = rects[j];
            for (int ty = r.Y0; ty < r.Y1; ty++)
                for (int tx = r.X0; tx < r.X1; tx++) list[fill[ty * gridX + tx]++] = s;
        }

        var color = new double[width * height * 3];
        var trans = new double[width * height];
        double bgR = background[0], bgG = background[1], bgB = background[2];
        Parallel.For(0, tiles, new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = maxThreads }, tile =>
        {
            int tx = tile % gridX, ty = tile / gridX;
            long s0 = start[tile], s1 = start[tile + 1];
            int yEnd = Math.Min(height, (ty + 1) * Block), xEnd = Math.Min(width, (tx + 1) * Block);
            for (int row = ty * Block; row < yEnd; row++)
                for (int col = tx * Block; col < xEnd; col++)
                {
                    double T = 1, cr = 0, cg = 0, cb = 0;
                    for (long k = s0; k < s1; k++)
                    {
                        ref readonly var s = ref list[k];
                        double dx = s.X - col, dy = s.Y - row;
                        double power = -0.5 * (s.A * dx * dx + s.C * dy * dy) - s.B * dx * dy;
                        if (power > 0 || power < s.SkipBelow) continue;
                        double alpha = Math.Min(0.99, s.O * Math.Exp(power));
                        if (alpha < 1.0 / 255.0) continue;
                        double testT = T * (1 - alpha);
                        if (testT < 0.0001) break;
                        double wgt = alpha * T;
                        cr += s.R * wgt; cg += s.G * wgt; cb += s.Bl * wgt;
                        T = testT;
                    }
                    int pix = row * width + col;
                    trans[pix] = T;
                    color[3 * pix] = cr + T * bgR;
                    color[3 * pix + 1] = cg + T * bgG;
                    color[3 * pix + 2] = cb + T * bgB;
                }
        });
        return (color, trans);
    }
}
