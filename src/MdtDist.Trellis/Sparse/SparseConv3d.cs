using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>Neighbour maps of submanifold convolutions, built once per coordinate set.</summary>
internal static class SparseNeighbours
{
    /// <summary>Largest dense index volume (entries) used for the lookup; larger grids use a sorted-code search.</summary>
    internal static long DenseVolumeLimit = 1L << 24;

    /// <summary>
    /// <c>[N, K³]</c> int64: for row p and kernel offset o = (i·K + j)·K + k, the row holding the voxel
    /// <c>p + (i - r, j - r, k - r)</c> of the same sample (r = (K-1)/2), or N when that voxel is not active.
    /// </summary>
    public static Tensor Map(SparseCoordinates c, int kernelSize) =>
        c.GetOrAdd($"nbr_{kernelSize}", () => Build(c, kernelSize).DetachFromDisposeScope());

    private static Tensor Build(SparseCoordinates c, int k)
    {
        long n = c.Count;
        int r = (k - 1) / 2;
        var device = c.Device;
        if (n == 0) return torch.zeros(0, (long)k * k * k, dtype: ScalarType.Int64, device: device);
        long xp = c.Extent[0] + 2 * r, yp = c.Extent[1] + 2 * r, zp = c.Extent[2] + 2 * r;
        var co = c.Coords64;
        // Linear code of each site in a per-sample box padded by r on every side, so that no offset wraps
        // into another row, plane or sample.
        var code = ((co[.., 0] * xp + (co[.., 1] + r)) * yp + (co[.., 2] + r)) * zp + (co[.., 3] + r);
        var deltas = new long[k * k * k];
        int o = 0;
        for (int i = -r; i <= r; i++)
            for (int j = -r; j <= r; j++)
                for (int l = -r; l <= r; l++)
                    deltas[o++] = (i * yp + j) * zp + l;
        var query = code.unsqueeze(1) + torch.tensor(deltas, device: device).unsqueeze(0); // [N, K³]
        long volume = c.BatchSize * xp * yp * zp;
        if (volume <= DenseVolumeLimit)
        {
            var vol = torch.full(volume, n, dtype: ScalarType.Int64, device: device);
            vol.index_put_(torch.arange(n, dtype: ScalarType.Int64, device: device), code);
            return vol.index_select(0, query.flatten()).view(n, -1);
        }
        else
        {
            var (sorted, order) = code.sort();
            var flat = query.flatten();
            var pos = torch.searchsorted(sorted, flat).clamp_max(n - 1);
            var found = sorted.index_select(0, pos).eq(flat);
            var rows = order.index_select(0, pos);
            return torch.where(found, rows, torch.full_like(rows, n)).view(n, -1);
        }
    }
}

/// <summary>The parameters of spconv's <c>SubMConv3d</c>: <c>weight [out, K, K, K, in]</c> ("KRSC") and <c>bias [out]</c>.</summary>
internal sealed class SubMConv3dWeights : nn.Module
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    public Parameter weight;
    public Parameter? bias;
#pragma warning restore IDE1006

    public SubMConv3dWeights(long inChannels, long outChannels, int kernelSize, bool hasBias, ScalarType dtype, Device? device)
        : base("SubMConv3d")
    {
        weight = new Parameter(torch.empty(new[] { outChannels, kernelSize, kernelSize, kernelSize, inChannels }, dtype: dtype, device: device));
        bias = hasBias ? new Parameter(torch.empty(new[] { outChannels }, dtype: dtype, device: device)) : null;
        if (!weight.is_meta)
        {
            using var _ = torch.no_grad();
            double fanIn = (double)kernelSize * kernelSize * kernelSize * inChannels;
            double bound = 1.0 / Math.Sqrt(fanIn);
            weight.uniform_(-bound, bound);
            bias?.uniform_(-bound, bound);
        }
        RegisterComponents();
    }
}

/// <summary>
/// TRELLIS's <c>sp.SparseConv3d</c> with stride 1: spconv's submanifold convolution (<c>SubMConv3d</c>).
/// Output sites = input sites, same row order;
/// <c>out[p] = bias + Σ_{i,j,k} W[:, i, j, k, :] · in[p + (i - r, j - r, k - r)]</c> over active neighbours of the same
/// sample (a cross-correlation). A kernel of size 1 reproduces spconv's 1×1×1 quirk: the <c>[out, 1, 1, 1, in]</c>
/// buffer is reinterpreted row-major as <c>[in, out]</c> (not transposed), i.e. <c>out = feats · W.view(in, out) + b</c>.
/// </summary>
internal sealed class SparseConv3d : nn.Module
{
    /// <summary>
    /// On the CPU, rows per gather+GEMM chunk are chosen so that one gathered chunk holds at most this many elements:
    /// 2M elements (8 MB of float32) stay in cache and are recycled by the allocator instead of being paged in afresh.
    /// Measured on a 2-core box (conv 128→128 on 20k voxels of a 64³ shell vs the dense GEMM of the same FLOPs):
    /// 1 thread 1.3–1.4×, 2 threads 1.5–1.6×; 32M-element chunks gave 2.5×. (When other processes oversubscribe the
    /// cores, many short parallel regions can stall: 2 threads then measured up to 6× with small chunks, 1.6× with 32M.)
    /// </summary>
    internal static long GatherChunkElements = 1L << 21;

    /// <summary>The limit on accelerators, where fewer, larger launches are better.</summary>
    internal static long DeviceGatherChunkElements = 1L << 25;

#pragma warning disable IDE1006
    public SubMConv3dWeights conv;
#pragma warning restore IDE1006

    public SparseConv3d(long inChannels, long outChannels, int kernelSize, bool hasBias = true, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(SparseConv3d))
    {
        if (kernelSize < 1 || kernelSize % 2 == 0)
            throw new ArgumentException($"only odd kernel sizes are supported for submanifold convolution, found {kernelSize}.", nameof(kernelSize));
        InChannels = inChannels;
        OutChannels = outChannels;
        KernelSize = kernelSize;
        conv = new SubMConv3dWeights(inChannels, outChannels, kernelSize, hasBias, dtype, device);
        RegisterComponents();
    }

    public long InChannels { get; }
    public long OutChannels { get; }
    public int KernelSize { get; }

    public SparseTensor Forward(SparseTensor x) => x.ReplaceFeats(Apply(x.Feats, x.Coordinates));

    public Tensor Apply(Tensor feats, SparseCoordinates coords)
    {
        if (feats.dim() != 2 || feats.shape[1] != InChannels)
            throw new ArgumentException($"sparse conv expects feats [N, {InChannels}], found [{string.Join(", ", feats.shape)}].", nameof(feats));
        var w = conv.weight;
        var b = conv.bias;
        if (KernelSize == 1)
        {
            // spconv's conv1x1 path: weight buffer viewed row-major as [in, out].
            var w2 = w.reshape(InChannels, OutChannels);
            return b is null ? feats.matmul(w2) : torch.addmm(b, feats, w2, 1, 1);
        }
        var nbr = SparseNeighbours.Map(coords, KernelSize);
        return UsePerOffset(nbr.shape[1], InChannels, OutChannels, feats.device_type)
            ? PerOffsetGemm(feats, nbr, w, b)
            : GatherGemm(feats, nbr, w, b);
    }

    /// <summary>Switch for A/B measurements of <see cref="ApplyUpsampled"/> in the residual blocks; on by default.</summary>
    internal static bool FuseUpsample = true;

    /// <summary>
    /// The convolution of nearest-neighbour up-sampled features, <c>Apply(coarse[FineToCoarse], map.Fine)</c>, without
    /// convolving the copies: every fine row is a copy of its coarse parent, so
    /// <c>out[p] = b + Σ_o W_o · coarse[parent(p + o)]</c> = <c>b + Σ_o Y[parent(p + o), o]</c> with
    /// <c>Y = coarse · [W_0 … W_{K³−1}]</c> computed once per coarse row: the GEMM shrinks by the fine-to-coarse row ratio
    /// (≈ 5 on a 64³ shell), what remains is a gather-sum of K³ rows of <c>out</c> channels per fine row.
    /// </summary>
    /// <param name="coarse">Coarse features <c>[M, in]</c>.</param>
    /// <param name="map">The map of the down-sampling the coarse sites came from.</param>
    /// <returns><c>[N_fine, out]</c> in the fine row order.</returns>
    internal Tensor ApplyUpsampled(Tensor coarse, DownsampleMap map)
    {
        if (coarse.shape[0] != map.Coarse.Count)
            throw new ArgumentException($"sparse conv expects coarse feats [{map.Coarse.Count}, {InChannels}], found [{string.Join(", ", coarse.shape)}].", nameof(coarse));
        return ApplyCopied(coarse, map.FineToCoarse, map.Fine);
    }

    /// <summary>
    /// The convolution on <paramref name="fine"/> sites of features copied from parent rows,
    /// <c>Apply(parents[parent], fine)</c>, computed as in <see cref="ApplyUpsampled"/> (up-sampling, subdivision).
    /// </summary>
    /// <param name="parents">Parent features <c>[M, in]</c>.</param>
    /// <param name="parent"><c>[N_fine]</c> int64: the parent row of every fine row.</param>
    /// <param name="fine">The fine sites.</param>
    internal Tensor ApplyCopied(Tensor parents, Tensor parent, SparseCoordinates fine)
    {
        var coarse = parents;
        if (coarse.dim() != 2 || coarse.shape[1] != InChannels)
            throw new ArgumentException($"sparse conv expects parent feats [M, {InChannels}], found [{string.Join(", ", coarse.shape)}].", nameof(parents));
        parent = parent.On(coarse.device);
        if (KernelSize == 1) return Apply(coarse, fine).index_select(0, parent);
        long m = coarse.shape[0], n = fine.Count, cin = InChannels, cout = OutChannels;
        var nbr = SparseNeighbours.Map(fine, KernelSize).On(coarse.device);
        long k3 = nbr.shape[1];
        if (n == 0) return torch.zeros(0, cout, dtype: coarse.dtype, device: coarse.device);
        var w = conv.weight.reshape(cout, k3, cin).permute(2, 1, 0).reshape(cin, k3 * cout);   // [in, K³·out], offset-major
        // Y = coarse · W written straight into a buffer whose last row (m·K³) is the zero row of absent neighbours
        var rows = torch.empty(m * k3 + 1, cout, dtype: coarse.dtype, device: coarse.device);
        rows.narrow(0, m * k3, 1).zero_();
        rows.narrow(0, 0, m * k3).view(m, k3 * cout).addmm_(coarse, w, 0, 1);
        // row of Y for (p, o): parent(nbr[p, o])·K³ + o, or the zero row where the neighbour is absent (nbr = n)
        var parentOrNone = torch.cat(new[] { parent, torch.full(1, -1L, dtype: ScalarType.Int64, device: parent.device) }, 0);
        var offsets = torch.arange(k3, dtype: ScalarType.Int64, device: parent.device).unsqueeze(0);
        long chunk = Math.Max(1, GatherChunkElements / (k3 * cout));
        var output = torch.empty(n, cout, dtype: rows.dtype, device: rows.device);   // written chunk by chunk: no list of parts to concatenate
        for (long s = 0; s < n; s += chunk)
        {
            long len = Math.Min(n, s + chunk) - s;
            using var inner = torch.NewDisposeScope();
            var par = parentOrNone.index_select(0, nbr.narrow(0, s, len).reshape(-1)).view(len, k3);
            var idx = torch.where(par.ge(0), par * k3 + offsets, torch.full_like(par, m * k3));
            var o = output.narrow(0, s, len);
            o.copy_(rows.index_select(0, idx.view(-1)).view(len, k3, cout).sum(1));
            if (conv.bias is not null) o.add_(conv.bias);
        }
        return output;
    }

    /// <summary>
    /// im2col columns (K³·in) from which the CPU takes the per-offset formulation. The im2col chunk holds
    /// <see cref="GatherChunkElements"/> / (K³·in) rows, and below about 512 rows its GEMM streams the whole
    /// <c>[K³·in, out]</c> weight from memory for a handful of rows: at in = 1024 (stage 2's 32³ convolution) a chunk held
    /// 75 rows against a 113 MB float32 weight and the convolution ran memory-bound. 2M / 512 = 4096 columns, i.e. in ≥ 152
    /// for K = 3.
    /// </summary>
    internal static long PerOffsetMinColumns = 4096;

    /// <summary>Switch for A/B measurements (benchmarks/Stage2Profile); on by default.</summary>
    internal static bool PerOffsetEnabled = true;

    /// <summary>
    /// Output channels from which the per-offset GEMMs are wide enough to win: measured on stage 2's convolutions (2 cores,
    /// float32, 1 thread, under load): 1024→1024 on 4,168 sites 2.7× faster per offset than in im2col chunks, 2048→128 on
    /// 22,720 sites 1.2× slower (its 128-column GEMMs are thin and its gathers of 2048-wide rows dominate).
    /// </summary>
    internal static long PerOffsetMinOut = 256;

    /// <summary>True when the per-offset formulation is used: on the CPU, for more than <see cref="PerOffsetMinColumns"/> im2col
    /// columns and at least <see cref="PerOffsetMinOut"/> output channels.</summary>
    internal static bool UsePerOffset(long k3, long inChannels, long outChannels, DeviceType device) =>
        PerOffsetEnabled && device == DeviceType.CPU && k3 > 1 && k3 * inChannels > PerOffsetMinColumns && outChannels >= PerOffsetMinOut;

    /// <summary>
    /// <c>out = bias + Σ_o gather(feats, nbr[:, o]) · W_o</c>: one gather of <c>[rows, in]</c> and one GEMM against the
    /// <c>[in, out]</c> slice of the weight per kernel offset, accumulated in place (spconv's gather-GEMM-scatter order
    /// for submanifold convolutions). Each GEMM has every row of the chunk and a weight slice that stays in cache.
    /// </summary>
    internal static Tensor PerOffsetGemm(Tensor feats, Tensor nbr, Tensor weight, Tensor? bias)
    {
        long n = feats.shape[0], cin = feats.shape[1], cout = weight.shape[0];
        long k3 = nbr.shape[1];
        if (n == 0) return torch.zeros(0, cout, dtype: feats.dtype, device: feats.device);
        var wk = weight.reshape(cout, k3, cin).permute(1, 2, 0);                 // [K³, in, out]
        var padded = torch.cat(new[] { feats, torch.zeros(1, cin, dtype: feats.dtype, device: feats.device) }, 0);
        nbr = nbr.On(feats.device);
        long centre = k3 / 2;
        // rows per chunk: the gathered [rows, in] block at most 8·GatherChunkElements elements (64 MB of float32), at least 512 rows
        long chunk = Math.Max(512, GatherChunkElements * 8 / cin);
        var output = torch.empty(n, cout, dtype: feats.dtype, device: feats.device);   // accumulated chunk by chunk in place
        for (long s = 0; s < n; s += chunk)
        {
            long rows = Math.Min(n, s + chunk) - s;
            using var scope = torch.NewDisposeScope();
            var own = feats.narrow(0, s, rows);
            var acc = output.narrow(0, s, rows);
            if (bias is null) acc.addmm_(own, wk[centre], 0, 1);
            else acc.copy_(bias.expand(rows, cout)).addmm_(own, wk[centre], 1, 1);
            var idx = nbr.narrow(0, s, rows).t().contiguous();                     // [K³, rows]
            for (long o = 0; o < k3; o++)
            {
                if (o == centre) continue;
                using var inner = torch.NewDisposeScope();
                acc.addmm_(padded.index_select(0, idx[o]), wk[o]);
            }
        }
        return output;
    }

    /// <summary>
    /// One gather of the K³ neighbour rows of every site (a zero row stands in for inactive neighbours) followed by one
    /// GEMM against the weight viewed as <c>[K³·in, out]</c>; rows are processed in chunks to bound the scratch memory.
    /// </summary>
    internal static Tensor GatherGemm(Tensor feats, Tensor nbr, Tensor weight, Tensor? bias)
    {
        long n = feats.shape[0], cin = feats.shape[1], cout = weight.shape[0];
        long k3 = nbr.shape[1];
        var wm = weight.permute(1, 2, 3, 4, 0).reshape(k3 * cin, cout);
        if (n == 0) return torch.zeros(0, cout, dtype: feats.dtype, device: feats.device);
        var padded = torch.cat(new[] { feats, torch.zeros(1, cin, dtype: feats.dtype, device: feats.device) }, 0);
        nbr = nbr.On(feats.device);
        long limit = feats.device_type == DeviceType.CPU ? GatherChunkElements : DeviceGatherChunkElements;
        long chunk = Math.Max(1, limit / (k3 * cin));
        if (chunk >= n)
        {
            var g = padded.index_select(0, nbr.view(-1)).view(n, k3 * cin);
            return bias is null ? g.matmul(wm) : torch.addmm(bias, g, wm, 1, 1);
        }
        var output = torch.empty(n, cout, dtype: feats.dtype, device: feats.device);   // written chunk by chunk: no parts to concatenate
        for (long s = 0; s < n; s += chunk)
        {
            long len = Math.Min(n, s + chunk) - s;
            using var scope = torch.NewDisposeScope();
            var g = padded.index_select(0, nbr.narrow(0, s, len).reshape(-1)).view(len, k3 * cin);
            var o = output.narrow(0, s, len);
            if (bias is null) o.addmm_(g, wm, 0, 1);
            else o.copy_(bias.expand(len, cout)).addmm_(g, wm, 1, 1);
        }
        return output;
    }
}
