using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Turns a set of occupied voxels (e.g. TRELLIS's stage-1 structure) into a cube mesh for <see cref="MeshRasterizer"/>.</summary>
public static class VoxelMesh
{
    /// <summary>
    /// The boundary of the union of voxels: for each voxel, each of its 6 faces whose neighbour is empty becomes a quad
    /// (two triangles, counter-clockwise from outside) with its own 4 vertices, so colours stay flat per voxel. Voxel
    /// <c>(i, j, k)</c> of a <paramref name="resolution"/>³ grid spans <c>[i/res − 0.5, (i+1)/res − 0.5]</c> on x (likewise
    /// y, z): TRELLIS's convention, the grid filling <c>[-0.5, 0.5]³</c>.
    /// </summary>
    /// <param name="coordinates">Integer <c>[N, 3]</c> voxel indices in <c>[0, resolution)</c> (for TRELLIS's <c>[N, 4]</c> rows of
    /// (batch, x, y, z), pass the last three columns of one batch). Duplicates are ignored.</param>
    /// <param name="resolution">Grid size per axis (TRELLIS: 64).</param>
    /// <param name="colors">Optional per-voxel colours <c>[N, 3]</c> in [0, 1]; without them the mesh has none.</param>
    /// <param name="dtype">Floating dtype of the mesh (default float32).</param>
    /// <exception cref="ArgumentException">A shape, dtype or index is out of range, or a colour is not finite.</exception>
    public static Mesh FromCoordinates(Tensor coordinates, int resolution, Tensor? colors = null, ScalarType dtype = ScalarType.Float32)
    {
        ArgumentNullException.ThrowIfNull(coordinates);
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1; found {resolution}", nameof(resolution));
        if (coordinates.dim() != 2 || coordinates.shape[1] != 3)
            throw new ArgumentException($"coordinates must be [N, 3]; found [{string.Join(", ", coordinates.shape)}]", nameof(coordinates));
        if (coordinates.is_floating_point() || coordinates.dtype == ScalarType.Bool)
            throw new ArgumentException($"coordinates must be an integer tensor; found {coordinates.dtype}", nameof(coordinates));
        long n = coordinates.shape[0];
        if (colors is not null && (colors.dim() != 2 || colors.shape[0] != n || colors.shape[1] != 3))
            throw new ArgumentException($"colors must be [{n}, 3] (one row per voxel); found [{string.Join(", ", colors.shape)}]", nameof(colors));
        if (!torch.is_floating_point(torch.empty(0, dtype: dtype)))
            throw new ArgumentException($"dtype must be floating; found {dtype}", nameof(dtype));
        long[] c;
        double[] col;
        using (var scope = torch.NewDisposeScope())
        {
            c = RenderValidation.HostArray<long>(coordinates.to(ScalarType.Int64));
            col = colors is null ? Array.Empty<double>() : RenderValidation.HostArray<double>(colors.to(ScalarType.Float64));
            RenderValidation.CheckFiniteRows(col, 3, "voxel colors", nameof(colors));
        }
        for (long i = 0; i < n; i++)
            for (int a = 0; a < 3; a++)
                if (c[3 * i + a] < 0 || c[3 * i + a] >= resolution)
                    throw new ArgumentException($"coordinates must lie in [0, {resolution}); row {i} is ({c[3 * i]}, {c[3 * i + 1]}, {c[3 * i + 2]})", nameof(coordinates));

        long Key(long x, long y, long z) => (x * resolution + y) * resolution + z;
        var occupied = new HashSet<long>();
        var first = new List<long>();
        for (long i = 0; i < n; i++)
            if (occupied.Add(Key(c[3 * i], c[3 * i + 1], c[3 * i + 2]))) first.Add(i);

        var verts = new List<double>();
        var faces = new List<long>();
        var vcol = new List<double>();
        double h = 1.0 / resolution;
        Span<long> p = stackalloc long[3];
        Span<long> q = stackalloc long[3];
        Span<double> v = stackalloc double[3];
        foreach (long i in first)
            for (int axis = 0; axis < 3; axis++)
                for (int sign = -1; sign <= 1; sign += 2)
                {
                    for (int k = 0; k < 3; k++) p[k] = q[k] = c[3 * i + k];
                    q[axis] += sign;
                    bool inside = q[axis] >= 0 && q[axis] < resolution;
                    if (inside && occupied.Contains(Key(q[0], q[1], q[2]))) continue;
                    // Quad on the face at p[axis] + (sign > 0 ? 1 : 0); corners in (u, w) = (0,0), (1,0), (1,1), (0,1) with u, w the
                    // next axes cyclically, so e_u × e_w = e_axis: counter-clockwise from +axis, reversed for −axis.
                    int u = (axis + 1) % 3, w = (axis + 2) % 3;
                    long baseIndex = verts.Count / 3;
                    foreach (var (cu, cw) in sign > 0 ? CornersPositive : CornersNegative)
                    {
                        v[axis] = (p[axis] + (sign > 0 ? 1 : 0)) * h - 0.5;
                        v[u] = (p[u] + cu) * h - 0.5;
                        v[w] = (p[w] + cw) * h - 0.5;
                        verts.Add(v[0]); verts.Add(v[1]); verts.Add(v[2]);
                        if (col.Length > 0) { vcol.Add(col[3 * i]); vcol.Add(col[3 * i + 1]); vcol.Add(col[3 * i + 2]); }
                    }
                    faces.AddRange(new[] { baseIndex, baseIndex + 1, baseIndex + 2, baseIndex, baseIndex + 2, baseIndex + 3 });
                }

        using var s = torch.NewDisposeScope();
        var vt = torch.tensor(verts.ToArray(), new long[] { verts.Count / 3, 3 }, ScalarType.Float64).to(dtype);
        var ft = torch.tensor(faces.ToArray(), new long[] { faces.Count / 3, 3 }, ScalarType.Int64);
        var ct = colors is null ? null : torch.tensor(vcol.ToArray(), new long[] { vcol.Count / 3, 3 }, ScalarType.Float64).to(dtype);
        return new Mesh(vt, ft, ct);
    }

    private static readonly (int U, int W)[] CornersPositive = { (0, 0), (1, 0), (1, 1), (0, 1) };
    private static readonly (int U, int W)[] CornersNegative = { (0, 0), (0, 1), (1, 1), (1, 0) };
}
