using MdtDist.Trellis.Rendering;
using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Export;

/// <summary>
/// Vertex colours for a mesh that has none, sampled from the Gaussians of the same object: each vertex takes the
/// opacity- and distance-weighted mean of the Gaussians' base colours near it.
/// </summary>
/// <remarks>
/// <para>For a vertex <c>v</c> and Gaussians with centres <c>μᵢ</c>, opacities <c>αᵢ</c> and base colours
/// <c>cᵢ = clamp(0.5 + C₀·f_dcᵢ, 0, 1)</c> (the SH degree-0 colour the splatting renderer uses, <c>C₀ = 0.2821</c>),</para>
/// <code>colour(v) = Σᵢ wᵢ cᵢ / Σᵢ wᵢ,   wᵢ = αᵢ · exp(−|v − μᵢ|² / 2σ²)  for |v − μᵢ| ≤ 3σ (else 0)</code>
/// <para>with the bandwidth <c>σ</c>. A vertex with no Gaussian within <c>3σ</c> takes the colour of the nearest Gaussian
/// (found exactly with a k-d tree over the centres, so a mesh far from its Gaussians costs one tree search per vertex, not V·G distances).
/// The colours are in the Gaussians' colour space: like the mesh decoder's colour channels they are sRGB-encoded values
/// (both decoders are trained against the same sRGB renders), so <see cref="GlbExportOptions.ColorsAreSrgb"/> applies
/// to them unchanged.</para>
/// <para>Neighbours are found with a uniform grid of cell size <c>3σ</c> over the Gaussian centres (sorted by cell; each
/// vertex visits its 27 neighbouring cells, expanded into vertex–Gaussian pairs without padding), in chunks of at most
/// about 10⁶ pairs so that memory stays bounded whatever the mesh size.
/// Gaussians with a non-finite centre, opacity or colour are ignored.</para>
/// </remarks>
public static class GaussianVertexColors
{
    /// <summary>
    /// The default bandwidth <c>σ</c>: half a voxel of TRELLIS's 64³ structure grid in the <c>[-0.5, 0.5]³</c> box (TRELLIS's
    /// Gaussian decoder spreads each voxel's Gaussians over about 1.5 voxels, so <c>3σ</c> reaches the Gaussians of the
    /// voxel a surface vertex lies in and of its neighbours).
    /// </summary>
    public const double DefaultBandwidth = 0.5 / 64;

    private const long ChunkElements = 1L << 20;   // vertex × candidate pairs per chunk (≈ 24 MB of float64 offsets)

    /// <summary>Samples one colour per vertex of <paramref name="mesh"/> from <paramref name="gaussians"/> (see the remarks).</summary>
    /// <param name="mesh">The mesh; its vertices in the Gaussians' world coordinates (TRELLIS: both in <c>[-0.5, 0.5]³</c>).</param>
    /// <param name="gaussians">A non-empty Gaussian set.</param>
    /// <param name="bandwidth">The kernel width <c>σ</c> in world units (> 0).</param>
    /// <param name="cancellationToken">Checked between chunks.</param>
    /// <returns>Colours <c>[V, 3]</c> in [0, 1], in the dtype and on the device of the mesh's vertices (the caller owns them).</returns>
    /// <exception cref="ArgumentException">No Gaussians (or none finite), or a bandwidth that is not a finite value > 0.</exception>
    public static Tensor Sample(Mesh mesh, Gaussians gaussians, double bandwidth = DefaultBandwidth, CancellationToken cancellationToken = default) =>
        Sample(mesh, gaussians, bandwidth, ChunkElements, cancellationToken);

    /// <summary><see cref="Sample(Mesh, Gaussians, double, CancellationToken)"/> with a given chunk size (vertex × candidate pairs).</summary>
    internal static Tensor Sample(Mesh mesh, Gaussians gaussians, double bandwidth, long chunkElements, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(gaussians);
        if (!(bandwidth > 0) || !double.IsFinite(bandwidth))
            throw new ArgumentException($"bandwidth must be a finite value > 0; found {bandwidth}", nameof(bandwidth));
        if (!gaussians.HasParameters || gaussians.Count == 0)
            throw new ArgumentException("gaussians holds no Gaussians: there is nothing to sample vertex colours from", nameof(gaussians));
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var dt = mesh.Vertices.dtype;
        var dev = mesh.Vertices.device;
        var verts = mesh.Vertices;
        long nv = mesh.VertexCount;

        var pos = gaussians.GetXyz().to(dt, dev);
        var alpha = gaussians.GetOpacity().reshape(-1).to(dt, dev);
        var rgb = (gaussians.GetFeatures().reshape(-1, 3).to(dt, dev) * GaussianRasterizer.ShC0 + 0.5).clamp(0, 1);
        var finite = pos.isfinite().all(1).logical_and(alpha.isfinite()).logical_and(rgb.isfinite().all(1));
        if (!finite.all().item<bool>())
        {
            pos = pos[finite];
            alpha = alpha[finite];
            rgb = rgb[finite];
        }
        long ng = pos.shape[0];
        if (ng == 0)
            throw new ArgumentException($"gaussians has {gaussians.Count} Gaussians but none with a finite centre, opacity and colour", nameof(gaussians));
        if (nv == 0) return torch.zeros(0, 3, dtype: dt, device: dev).MoveToOuterDisposeScope();

        // the grid: cells of size r = 3σ from one cell below the lowest centre, so every centre's neighbours have indices ≥ 0
        double radius = 3 * bandwidth;
        var origin = pos.amin(0) - radius;
        var gcell = ((pos - origin) / radius).floor().to(ScalarType.Int64);
        var dims = (gcell.amax(0) + 2).data<long>().ToArray();
        double far = dims.Max() + 2;   // vertex cells are clamped to [-2, far]: out of the grid either way, no overflow
        Tensor CellOf(Tensor p) => ((p - origin) / radius).clamp(-2, far).floor().to(ScalarType.Int64);
        if ((double)dims[0] * dims[1] * dims[2] > 1e18)
            throw new ArgumentException($"bandwidth {bandwidth} is too small for Gaussians spread over [{string.Join(", ", pos.amin(0).to(ScalarType.Float64).data<double>().ToArray())}] … [{string.Join(", ", pos.amax(0).to(ScalarType.Float64).data<double>().ToArray())}]", nameof(bandwidth));
        Tensor Key(Tensor c) => (c.select(-1, 0) * dims[1] + c.select(-1, 1)) * dims[2] + c.select(-1, 2);

        var (sortedKey, order) = Key(gcell).sort();
        var (cellKeys, _, countsOrNull) = torch.unique_consecutive(sortedKey, return_counts: true);
        var cellCounts = countsOrNull!;
        var cellStarts = cellCounts.cumsum(0) - cellCounts;
        var spos = pos.index_select(0, order);
        var salpha = alpha.index_select(0, order);
        var srgb = rgb.index_select(0, order);
        var offsets = torch.tensor(
            Enumerable.Range(0, 27).SelectMany(i => new long[] { i / 9 - 1, i / 3 % 3 - 1, i % 3 - 1 }).ToArray(), new long[] { 27, 3 }, device: dev);
        var dimsT = torch.tensor(dims, device: dev);
        long lastCell = cellKeys.shape[0] - 1;
        double invTwoSigma2 = -0.5 / (bandwidth * bandwidth);

        var colors = torch.zeros(nv, 3, dtype: dt, device: dev);
        var covered = torch.zeros(nv, dtype: ScalarType.Bool, device: dev);
        // vertices per chunk: start from the mean cell occupancy and halve while a chunk has more pairs than the budget
        long chunk = Math.Max(1, chunkElements / (27 * Math.Max(1, ng / (lastCell + 1))));
        for (long s = 0; s < nv;)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var inner = torch.NewDisposeScope();
            long e = Math.Min(nv, s + chunk);
            var v = verts.narrow(0, s, e - s);
            var nb = CellOf(v).unsqueeze(1) + offsets.unsqueeze(0);                                     // [C, 27, 3]
            var inGrid = nb.ge(0).all(-1).logical_and(nb.lt(dimsT).all(-1));
            var key = Key(nb);
            var at = torch.searchsorted(cellKeys, key.reshape(-1)).clamp_max(lastCell).view_as(key);   // [C, 27]
            var hit = inGrid.logical_and(cellKeys[at].eq(key));
            var count = torch.where(hit, cellCounts[at], torch.zeros_like(at)).reshape(-1);            // [C·27]
            long pairs = count.sum().item<long>();
            if (pairs > chunkElements && e - s > 1)
            {
                chunk = Math.Max(1, (e - s) / 2);
                continue;
            }
            // one entry per (vertex, Gaussian in a neighbouring cell): the cells' runs of the sorted Gaussians, expanded
            var owner = torch.arange(count.shape[0], device: dev).repeat_interleave(count);             // [P] → (vertex, cell)
            var runStart = (count.cumsum(0) - count).index_select(0, owner);
            var g = cellStarts[at].reshape(-1).index_select(0, owner) + torch.arange(pairs, device: dev) - runStart;
            var vi = owner.div(27, rounding_mode: RoundingMode.floor);
            var d2 = (spos.index_select(0, g) - v.index_select(0, vi)).square().sum(1);
            var w = torch.where(d2.le(radius * radius), salpha.index_select(0, g) * torch.exp(d2 * invTwoSigma2), torch.zeros_like(d2));
            var wsum = torch.zeros(e - s, dtype: dt, device: dev).index_add_(0, vi, w, 1.0);
            var csum = torch.zeros(e - s, 3, dtype: dt, device: dev).index_add_(0, vi, w.unsqueeze(1) * srgb.index_select(0, g), 1.0);
            var ok = wsum.gt(0);
            colors.narrow(0, s, e - s).copy_(torch.where(ok.unsqueeze(1), csum / torch.where(ok, wsum, torch.ones_like(wsum)).unsqueeze(1), torch.zeros_like(csum)));
            covered.narrow(0, s, e - s).copy_(ok);
            s = e;
            if (pairs < chunkElements / 4) chunk *= 2;
        }

        // vertices with no Gaussian within 3σ: the nearest Gaussian's colour (a k-d tree over the centres, queried in parallel)
        var lonely = (~covered).nonzero().reshape(-1);
        long nl = lonely.shape[0];
        if (nl > 0)
        {
            var tree = new PointKdTree(pos.to(ScalarType.Float64, CPU).contiguous().data<double>().ToArray());
            var q = verts.index_select(0, lonely).to(ScalarType.Float64, CPU).contiguous().data<double>().ToArray();
            var nearest = new long[nl];
            Parallel.For(0, (int)nl, new ParallelOptions { CancellationToken = cancellationToken },
                i => nearest[i] = tree.Nearest(q[3 * i], q[3 * i + 1], q[3 * i + 2]));
            colors.index_copy_(0, lonely, rgb.index_select(0, torch.tensor(nearest, device: dev)));
        }
        return colors.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// For each sample, the mesh itself when it has colours, else a new mesh with colours <see cref="Sample(Mesh, Gaussians, double, CancellationToken)">sampled</see>
    /// from that sample's Gaussians (the replaced mesh is disposed). Empty meshes and samples without Gaussians stay as
    /// they are.
    /// </summary>
    internal static IReadOnlyList<Mesh> FillMissing(IReadOnlyList<Mesh> meshes, IReadOnlyList<Gaussians> gaussians)
    {
        if (meshes.Count != gaussians.Count)
            throw new ArgumentException($"{meshes.Count} meshes but {gaussians.Count} Gaussian sets: expected one per sample", nameof(gaussians));
        var result = new Mesh[meshes.Count];
        for (int i = 0; i < meshes.Count; i++)
        {
            var m = meshes[i];
            if (m.Colors is not null || m.VertexCount == 0 || !gaussians[i].HasParameters || gaussians[i].Count == 0)
            {
                result[i] = m;
                continue;
            }
            using var scope = torch.NewDisposeScope();
            result[i] = m.WithColors(Sample(m, gaussians[i]));
            m.Dispose();
        }
        return result;
    }
}
