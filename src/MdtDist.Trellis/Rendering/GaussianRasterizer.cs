using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Settings of <see cref="GaussianRasterizer"/>; the defaults are TRELLIS's preview settings (<c>render_utils.get_renderer</c>).</summary>
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
/// <para>Per Gaussian (vectorised in TorchSharp, float64, on the Gaussians' device): world mean <c>μ</c>, scales <c>s</c>,
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
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var f64 = ScalarType.Float64;
        var xyz = g.GetXyz().to(f64);
        var scales = g.GetScaling().to(f64) * options.ScaleModifier;
        var q = g.GetRotation().to(f64);
        var opacity = g.GetOpacity().to(f64).reshape(-1);
        var features = g.FeaturesDc.to(f64).reshape(-1, 3);
        foreach (var (t, name) in new[] { (xyz, "xyz"), (scales, "scaling"), (q, "rotation"), (opacity.unsqueeze(1), "opacity"), (features, "features_dc") })
            RenderValidation.CheckFiniteRows(t, "Gaussian " + name, "gaussians");

        var dev = xyz.device;
        var e = camera.Extrinsics;
        var rv = torch.tensor(new[] { e[0], e[1], e[2], e[4], e[5], e[6], e[8], e[9], e[10] }, new long[] { 3, 3 }, f64, dev);
        var tv = torch.tensor(new[] { e[3], e[7], e[11] }, f64, dev);
        var pv = xyz.matmul(rv.t()) + tv;
        var tx = pv[.., 0]; var ty = pv[.., 1]; var tz = pv[.., 2];

        // Σ = R(q)·diag(s)²·R(q)ᵀ with q = (w, x, y, z), so Σ' = J·R_v·Σ·R_vᵀ·Jᵀ = M·Mᵀ with M = J·R_v·R(q)·diag(s) (2×3 per
        // Gaussian). Built from [G, 3] rows rather than batched 3×3 matrix products, which are slow for tiny matrices.
        var (w, x, y, z) = (q[.., 0], q[.., 1], q[.., 2], q[.., 3]);
        var rq = torch.stack(new[]
        {
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        }, 1).reshape(-1, 3, 3);

        double tanX = 0.5 / camera.Fx, tanY = 0.5 / camera.Fy;
        double focalX = width * camera.Fx, focalY = height * camera.Fy;
        var txc = (tx / tz).clamp(-1.3 * tanX, 1.3 * tanX) * tz;
        var tyc = (ty / tz).clamp(-1.3 * tanY, 1.3 * tanY) * tz;
        // Rows of J·R_v: J = [[F_x/t_z, 0, −F_x·t̂_x/t_z²], [0, F_y/t_z, −F_y·t̂_y/t_z²]].
        var j0 = (focalX / tz).unsqueeze(1) * rv[0].unsqueeze(0) + (-(focalX * txc) / (tz * tz)).unsqueeze(1) * rv[2].unsqueeze(0);
        var j1 = (focalY / tz).unsqueeze(1) * rv[1].unsqueeze(0) + (-(focalY * tyc) / (tz * tz)).unsqueeze(1) * rv[2].unsqueeze(0);
        var m0 = (j0.unsqueeze(2) * rq).sum(1) * scales;
        var m1 = (j1.unsqueeze(2) * rq).sum(1) * scales;
        var a = (m0 * m0).sum(1); var b = (m0 * m1).sum(1); var c = (m1 * m1).sum(1);
        double k = options.KernelSize;
        var det0 = (a * c - b * b).clamp_min(1e-6);
        var det1 = ((a + k) * (c + k) - b * b).clamp_min(1e-6);
        var coef = torch.sqrt(det0 / (det1 + 1e-6) + 1e-6);
        coef = torch.where(det0.le(1e-6).logical_or(det1.le(1e-6)), torch.zeros_like(coef), coef);
        a = a + k; c = c + k;
        var det = a * c - b * b;
        var safeDet = torch.where(det.eq(0), torch.ones_like(det), det);
        var mid = 0.5 * (a + c);
        var root = torch.sqrt((mid * mid - det).clamp_min(0.1));
        var radius = torch.ceil(3 * torch.sqrt(torch.maximum(mid + root, mid - root)));

        // TRELLIS's projection matrix and ndc2Pix: ndc = clip / (w + 1e-7), pixel = ((ndc + 1)·S − 1) / 2.
        var ndcX = (2 * camera.Fx * tx + (2 * camera.Cx - 1) * tz) / (tz + 1e-7);
        var ndcY = (2 * camera.Fy * ty + (2 * camera.Cy - 1) * tz) / (tz + 1e-7);
        var px = ((ndcX + 1) * width - 1) * 0.5;
        var py = ((ndcY + 1) * height - 1) * 0.5;
        const double shC0 = 0.28209479177387814;
        var rgb = (shC0 * features + 0.5).clamp_min(0);
        var keep = tz.gt(0.2).logical_and(det.ne(0));

        double[] Arr(Tensor t) => RenderValidation.HostArray<double>(t);
        var keepArr = RenderValidation.HostArray<byte>(keep.to(ScalarType.Byte));
        double[] pxA = Arr(px), pyA = Arr(py), aA = Arr(a), bA = Arr(b), cA = Arr(c), dA = Arr(safeDet), oA = Arr(opacity * coef),
            rA = Arr(radius), zA = Arr(tz), rgbA = Arr(rgb);
        int gridX = (width + Block - 1) / Block, gridY = (height + Block - 1) / Block;
        var kept = new List<int>();
        for (int i = 0; i < keepArr.Length; i++)
        {
            if (keepArr[i] == 0) continue;
            var (x0, y0, x1, y1) = Rect(pxA[i], pyA[i], (int)rA[i], gridX, gridY);
            if ((x1 - x0) * (y1 - y0) == 0) continue;
            kept.Add(i);
        }
        var p = new Projected(kept.Count);
        for (int j = 0; j < kept.Count; j++)
        {
            int i = kept[j];
            p.Index[j] = i; p.X[j] = pxA[i]; p.Y[j] = pyA[i];
            p.ConA[j] = cA[i] / dA[i]; p.ConB[j] = -bA[i] / dA[i]; p.ConC[j] = aA[i] / dA[i];
            p.Opacity[j] = oA[i]; p.Depth[j] = zA[i]; p.Radius[j] = (int)rA[i];
            p.Rgb[3 * j] = rgbA[3 * i]; p.Rgb[3 * j + 1] = rgbA[3 * i + 1]; p.Rgb[3 * j + 2] = rgbA[3 * i + 2];
        }
        return p;
    }

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
