using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// What TRELLIS's mesh extractor (<c>SparseFeatures2Mesh</c>) hands to FlexiCubes for one sample, computed from the
/// mesh decoder's per-cube features: the cube vertices with their averaged attributes, and (on demand) the dense
/// grids FlexiCubes takes (vertex positions, scalar field, colours, and the per-cube weights β, α, γ).
/// </summary>
/// <remarks>
/// <para>Per-cube feature layout (<c>53</c> channels, or <c>101</c> with colour): <c>sdf [0, 8)</c>, <c>deform [8, 32)</c>
/// as [8, 3], <c>weights [32, 53)</c> (β = 0..11, α = 12..19, γ = 20), <c>color [53, 101)</c> as [8, 6]. The 8 values of a
/// cube follow the corners (0,0,0), (1,0,0), (0,1,0), (1,1,0), (0,0,1), (1,0,1), (0,1,1), (1,1,1) (x fastest).</para>
/// <para>The sdf bias <c>−1/res</c> is added (to a copy; TRELLIS adds it in place). Vertex attributes are plain means over
/// every (cube, corner) landing on the vertex. Vertices are sorted lexicographically by (x, y, z). Dense vertex grids
/// have <c>(res+1)³</c> entries with linear id <c>(x·(res+1) + y)·(res+1) + z</c>; dense cube grids <c>res³</c> with id
/// <c>(x·res + y)·res + z</c>. The dense grids grow with <c>res³</c> (res 256 in TRELLIS: ~17M entries per channel), so
/// they are built only when asked for.</para>
/// <para>The instance owns its tensors (detached from dispose scopes); dispose it to free them.</para>
/// </remarks>
public sealed class FlexiCubesInputs : IDisposable
{
    /// <summary>Channels of the per-cube features without colour.</summary>
    public const int ChannelsWithoutColor = 53;

    /// <summary>Channels of the per-cube features with colour (RGB and a normal map, 6 per corner).</summary>
    public const int ChannelsWithColor = 101;

    /// <summary>The cube corners in TRELLIS's order (x fastest).</summary>
    internal static readonly long[,] CubeCorners = { { 0, 0, 0 }, { 1, 0, 0 }, { 0, 1, 0 }, { 1, 1, 0 }, { 0, 0, 1 }, { 1, 0, 1 }, { 0, 1, 1 }, { 1, 1, 1 } };

    private FlexiCubesInputs(int resolution, bool useColor, Tensor cubeCoords, Tensor cubeWeights, Tensor vertexPositions, Tensor vertexAttributes,
        Tensor consistencyLoss)
    {
        ConsistencyLoss = consistencyLoss.DetachFromDisposeScope();
        Resolution = resolution;
        UseColor = useColor;
        CubeCoords = cubeCoords.DetachFromDisposeScope();
        CubeWeights = cubeWeights.DetachFromDisposeScope();
        VertexPositions = vertexPositions.DetachFromDisposeScope();
        VertexAttributes = vertexAttributes.DetachFromDisposeScope();
    }

    /// <summary>Cubes per axis of the grid (TRELLIS: 4 × the decoder resolution).</summary>
    public int Resolution { get; }

    /// <summary>Whether the features carry colours.</summary>
    public bool UseColor { get; }

    /// <summary>The sample's cubes, <c>[n, 3]</c> int64 (x, y, z), in the decoder's row order.</summary>
    public Tensor CubeCoords { get; }

    /// <summary>The cubes' FlexiCubes weights, <c>[n, 21]</c>: β (12), α (8), γ (1), in <see cref="CubeCoords"/> order.</summary>
    public Tensor CubeWeights { get; }

    /// <summary>The cube vertices (<c>v_pos</c>), <c>[V, 3]</c> int64, unique and sorted lexicographically.</summary>
    public Tensor VertexPositions { get; }

    /// <summary>
    /// The averaged vertex attributes (<c>v_attrs</c>), <c>[V, 4]</c> or <c>[V, 10]</c>: sdf (with the −1/res bias),
    /// deform (3), and colour (6) when <see cref="UseColor"/>.
    /// </summary>
    public Tensor VertexAttributes { get; }

    /// <summary>
    /// TRELLIS's training <c>con_loss</c> of <c>sparse_cube2verts</c>, a scalar: the mean over cubes, corners and
    /// attribute channels of <c>(attr − v_attrs[its vertex])²</c>.
    /// </summary>
    public Tensor ConsistencyLoss { get; }

    /// <summary>Number of cubes.</summary>
    public long CubeCount => CubeCoords.shape[0];

    /// <summary>Number of cube vertices.</summary>
    public long VertexCount => VertexPositions.shape[0];

    /// <summary>
    /// Computes the extractor inputs of one sample, as <c>SparseFeatures2Mesh</c> does before calling FlexiCubes.
    /// </summary>
    /// <param name="cubeCoords">Cube coordinates <c>[n, 3]</c> (integer, in <c>[0, resolution)</c>, no duplicates).</param>
    /// <param name="feats">Per-cube features <c>[n, 53]</c>, or <c>[n, 101]</c> with colour.</param>
    /// <param name="resolution">Cubes per axis.</param>
    /// <param name="useColor">Whether <paramref name="feats"/> carries colours.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or coordinates do not fit.</exception>
    public static FlexiCubesInputs FromFeatures(Tensor cubeCoords, Tensor feats, int resolution, bool useColor)
    {
        ArgumentNullException.ThrowIfNull(cubeCoords);
        ArgumentNullException.ThrowIfNull(feats);
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1, found {resolution}.", nameof(resolution));
        int channels = useColor ? ChannelsWithColor : ChannelsWithoutColor;
        if (cubeCoords.dim() != 2 || cubeCoords.shape[1] != 3)
            throw new ArgumentException($"cubeCoords must be [n, 3], found [{string.Join(", ", cubeCoords.shape)}].", nameof(cubeCoords));
        if (cubeCoords.is_floating_point() || cubeCoords.dtype == ScalarType.Bool)
            throw new ArgumentException($"cubeCoords must be an integer tensor, found {cubeCoords.dtype}.", nameof(cubeCoords));
        if (feats.dim() != 2 || feats.shape[0] != cubeCoords.shape[0] || feats.shape[1] != channels)
            throw new ArgumentException($"feats must be [{cubeCoords.shape[0]}, {channels}] (use_color {useColor}), found [{string.Join(", ", feats.shape)}].", nameof(feats));
        if (!feats.is_floating_point()) throw new ArgumentException($"feats must be floating, found {feats.dtype}.", nameof(feats));

        using var scope = torch.NewDisposeScope();
        var device = feats.device;
        long n = feats.shape[0];
        var coords = cubeCoords.to(ScalarType.Int64, device);
        if (n > 0)
        {
            long min = coords.min().item<long>(), max = coords.max().item<long>();
            if (min < 0 || max >= resolution)
                throw new ArgumentException($"cube coordinates must lie in [0, {resolution}), found values in [{min}, {max}].", nameof(cubeCoords));
            var cubeCode = (coords[.., 0] * resolution + coords[.., 1]) * resolution + coords[.., 2];
            long distinct = cubeCode.unique().output.shape[0];
            if (distinct != n) throw new ArgumentException($"cubeCoords lists {n - distinct} cube(s) more than once; every cube must appear once.", nameof(cubeCoords));
        }
        var ct = feats.dtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : feats.dtype;
        var f = feats.to(ct);
        var sdf = f[.., 0..8].reshape(n, 8, 1) + (-1.0 / resolution);
        var deform = f[.., 8..32].reshape(n, 8, 3);
        var weights = f[.., 32..53];
        var parts = useColor ? new[] { sdf, deform, f[.., 53..101].reshape(n, 8, 6) } : new[] { sdf, deform };
        var attrs = torch.cat(parts, -1);                                       // [n, 8, K]
        long k = attrs.shape[2];

        // sparse_cube2verts: corner k of cube c is vertex c + corner_k; unique vertices in lexicographic order.
        var corners = torch.tensor(Flatten(CubeCorners), new long[] { 8, 3 }, dtype: ScalarType.Int64, device: device);
        var verts = (coords.unsqueeze(1) + corners.unsqueeze(0)).reshape(-1, 3);  // [n*8, 3]
        long r1 = resolution + 1;
        var code = (verts[.., 0] * r1 + verts[.., 1]) * r1 + verts[.., 2];
        var (uniq, inverse, counts) = code.unique(sorted: true, return_inverse: true, return_counts: true);
        var vpos = torch.stack(new[] { uniq.div(r1 * r1, RoundingMode.floor), uniq.div(r1, RoundingMode.floor) % r1, uniq % r1 }, 1);
        var sums = torch.zeros(new[] { uniq.shape[0], k }, dtype: ct, device: device).index_add(0, inverse!, attrs.reshape(-1, k), 1.0);
        var vattrs = sums / counts!.to(ct).unsqueeze(1);
        // the consistency loss (mean squared deviation of every cube corner from its vertex's mean), summed over chunks of
        // cubes: its [n, 8, k] difference at once is 3 × 0.4 GB for the 1.27 M cubes of a 256³ decode
        var conSum = torch.zeros(Array.Empty<long>(), dtype: ct, device: device);
        const long ConChunk = 1 << 16;
        var attrRows = attrs.reshape(-1, k);
        for (long s = 0; s < n * 8; s += ConChunk * 8)
        {
            using var inner = torch.NewDisposeScope();
            long len = Math.Min(ConChunk * 8, n * 8 - s);
            conSum.add_((attrRows.narrow(0, s, len) - vattrs.index_select(0, inverse!.narrow(0, s, len))).square().sum());
        }
        var conLoss = n == 0 ? conSum : conSum / (n * 8 * k);
        return new FlexiCubesInputs(resolution, useColor, coords.alias(), weights.contiguous(), vpos, vattrs, conLoss);
    }

    /// <summary>
    /// TRELLIS's <c>construct_dense_grid(res)</c>: all <c>(res+1)³</c> grid vertices <c>[V, 3]</c> (int64, x-major) and,
    /// for each of the <c>res³</c> cubes, the linear ids of its 8 corners <c>[C, 8]</c> (corner order as above).
    /// </summary>
    public static (Tensor Vertices, Tensor Cubes) DenseGrid(int resolution, Device? device = null)
    {
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1, found {resolution}.", nameof(resolution));
        using var scope = torch.NewDisposeScope();
        long rv = resolution + 1;
        var ids = torch.arange(rv * rv * rv, dtype: ScalarType.Int64, device: device);
        var cubeIds = ids.reshape(rv, rv, rv)[..resolution, ..resolution, ..resolution].flatten();
        var bias = new long[8];
        for (int c = 0; c < 8; c++) bias[c] = (CubeCorners[c, 0] * rv + CubeCorners[c, 1]) * rv + CubeCorners[c, 2];
        var cubes = cubeIds.unsqueeze(1) + torch.tensor(bias, dtype: ScalarType.Int64, device: device).unsqueeze(0);
        var verts = torch.stack(new[] { ids.div(rv * rv, RoundingMode.floor), ids.div(rv, RoundingMode.floor) % rv, ids % rv }, 1);
        return (verts.MoveToOuterDisposeScope(), cubes.MoveToOuterDisposeScope());
    }

    /// <summary>Linear ids of <see cref="VertexPositions"/> in the dense <c>(res+1)³</c> vertex grid, <c>[V]</c>.</summary>
    public Tensor VertexIds()
    {
        long r1 = Resolution + 1;
        using var scope = torch.NewDisposeScope();
        var v = VertexPositions;
        return ((v[.., 0] * r1 + v[.., 1]) * r1 + v[.., 2]).MoveToOuterDisposeScope();
    }

    /// <summary>Linear ids of <see cref="CubeCoords"/> in the dense <c>res³</c> cube grid, <c>[n]</c>.</summary>
    public Tensor CubeIds()
    {
        long r = Resolution;
        using var scope = torch.NewDisposeScope();
        var c = CubeCoords;
        return ((c[.., 0] * r + c[.., 1]) * r + c[.., 2]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The deformed positions of the cube vertices, <c>v / res − 0.5 + (1 − 1e-8) / (2·res) · tanh(deform)</c>,
    /// <c>[V, 3]</c> (TRELLIS's <c>get_defomed_verts</c>; also its training <c>tsdf_v</c>).
    /// </summary>
    public Tensor DeformedVertices()
    {
        using var scope = torch.NewDisposeScope();
        return Deformed(VertexPositions, VertexAttributes[.., 1..4]).MoveToOuterDisposeScope();
    }

    /// <summary>FlexiCubes' <c>voxelgrid_vertices</c>: every dense grid vertex deformed, <c>[(res+1)³, 3]</c>.</summary>
    public Tensor DenseVertices()
    {
        using var scope = torch.NewDisposeScope();
        var (verts, _) = DenseGrid(Resolution, VertexAttributes.device);
        var deform = torch.zeros(new[] { verts.shape[0], 3L }, dtype: VertexAttributes.dtype, device: VertexAttributes.device);
        deform.index_put_(VertexAttributes[.., 1..4], VertexIds());
        return Deformed(verts, deform).MoveToOuterDisposeScope();
    }

    /// <summary>FlexiCubes' <c>scalar_field</c>: the vertex sdf on the dense vertex grid, 1 (outside) elsewhere, <c>[(res+1)³]</c>.</summary>
    public Tensor DenseScalarField()
    {
        using var scope = torch.NewDisposeScope();
        long rv = Resolution + 1;
        var s = torch.ones(rv * rv * rv, dtype: VertexAttributes.dtype, device: VertexAttributes.device);
        s.index_put_(VertexAttributes[.., 0], VertexIds());
        return s.MoveToOuterDisposeScope();
    }

    /// <summary>FlexiCubes' <c>voxelgrid_colors</c> (before its sigmoid): the vertex colours on the dense vertex grid, 0 elsewhere, <c>[(res+1)³, 6]</c>; null without colour.</summary>
    public Tensor? DenseColors()
    {
        if (!UseColor) return null;
        using var scope = torch.NewDisposeScope();
        long rv = Resolution + 1;
        var c = torch.zeros(new[] { rv * rv * rv, 6L }, dtype: VertexAttributes.dtype, device: VertexAttributes.device);
        c.index_put_(VertexAttributes[.., 4..10], VertexIds());
        return c.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The cube weights on the dense cube grid, 0 elsewhere, <c>[res³, 21]</c>: FlexiCubes' <c>beta = [.., 0:12]</c>,
    /// <c>alpha = [.., 12:20]</c>, <c>gamma_f = [.., 20]</c>.
    /// </summary>
    public Tensor DenseWeights()
    {
        using var scope = torch.NewDisposeScope();
        long r = Resolution;
        var w = torch.zeros(new[] { r * r * r, 21L }, dtype: CubeWeights.dtype, device: CubeWeights.device);
        w.index_put_(CubeWeights, CubeIds());
        return w.MoveToOuterDisposeScope();
    }

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        CubeCoords.Dispose();
        CubeWeights.Dispose();
        VertexPositions.Dispose();
        VertexAttributes.Dispose();
        ConsistencyLoss.Dispose();
    }

    internal Tensor Deformed(Tensor v, Tensor deform) =>
        v.to(deform.dtype) / Resolution - 0.5 + (1 - 1e-8) / (Resolution * 2.0) * torch.tanh(deform);

    private static long[] Flatten(long[,] a)
    {
        var r = new long[a.Length];
        int i = 0;
        foreach (var v in a) r[i++] = v;
        return r;
    }
}
