using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// A triangle mesh: vertex positions <c>[V, 3]</c> (floating), faces <c>[F, 3]</c> (int64 vertex indices, counter-clockwise
/// seen from outside), and optional per-vertex colours <c>[V, 3]</c> (linear RGB in [0, 1]) and unit normals <c>[V, 3]</c>.
/// </summary>
/// <remarks>
/// <para>Coordinates are TRELLIS's: z up, the object inside the <c>[-0.5, 0.5]³</c> box. Exporters that need another
/// convention (glTF is y up) convert on write.</para>
/// <para>The constructor checks shapes, dtypes, devices, that every face index lies in <c>[0, V)</c> and that every
/// position, colour and normal is finite, and throws <see cref="ArgumentException"/> naming the tensor otherwise.
/// An empty mesh (<c>V = 0</c>, <c>F = 0</c>) is valid. Degenerate faces (repeated indices, zero area) are allowed here;
/// <see cref="WithoutDegenerateFaces"/> removes them.</para>
/// <para>The instance owns its tensors (aliases detached from any dispose scope; the caller keeps its own handles);
/// dispose it to free them.</para>
/// </remarks>
public sealed class Mesh : IDisposable
{
    /// <summary>Creates a mesh; see the class remarks for the checks.</summary>
    /// <param name="vertices">Positions <c>[V, 3]</c>, a floating dtype.</param>
    /// <param name="faces">Triangles <c>[F, 3]</c>, an integer dtype (kept as int64).</param>
    /// <param name="colors">Optional colours <c>[V, 3]</c> in the dtype of <paramref name="vertices"/>.</param>
    /// <param name="normals">Optional normals <c>[V, 3]</c> in the dtype of <paramref name="vertices"/>.</param>
    /// <exception cref="ArgumentException">A shape, dtype, device, index or value does not fit.</exception>
    public Mesh(Tensor vertices, Tensor faces, Tensor? colors = null, Tensor? normals = null)
    {
        ArgumentNullException.ThrowIfNull(vertices);
        ArgumentNullException.ThrowIfNull(faces);
        if (vertices.dim() != 2 || vertices.shape[1] != 3)
            throw new ArgumentException($"vertices must be [V, 3]; found [{string.Join(", ", vertices.shape)}]", nameof(vertices));
        if (!vertices.is_floating_point())
            throw new ArgumentException($"vertices must be a floating tensor; found {vertices.dtype}", nameof(vertices));
        if (faces.dim() != 2 || faces.shape[1] != 3)
            throw new ArgumentException($"faces must be [F, 3]; found [{string.Join(", ", faces.shape)}]", nameof(faces));
        if (faces.is_floating_point() || faces.dtype == ScalarType.Bool || faces.is_complex())
            throw new ArgumentException($"faces must be an integer tensor; found {faces.dtype}", nameof(faces));
        long v = vertices.shape[0];
        CheckAttribute(colors, nameof(colors), vertices);
        CheckAttribute(normals, nameof(normals), vertices);
        if (!SameDevice(faces.device, vertices.device))
            throw new ArgumentException($"faces is on {faces.device}, expected {vertices.device} (the device of vertices)", nameof(faces));
        CheckFinite(vertices, nameof(vertices));
        if (colors is not null) CheckFinite(colors, nameof(colors));
        if (normals is not null) CheckFinite(normals, nameof(normals));
        if (faces.shape[0] > 0)
        {
            using var scope = torch.NewDisposeScope();
            long min = faces.min().item<long>(), max = faces.max().item<long>();
            if (min < 0 || max >= v)
                throw new ArgumentException($"face indices must lie in [0, {v}) (the vertex count); found values in [{min}, {max}]", nameof(faces));
        }
        Vertices = vertices.alias().DetachFromDisposeScope();
        Faces = (faces.dtype == ScalarType.Int64 ? faces.alias() : faces.to(ScalarType.Int64)).DetachFromDisposeScope();
        Colors = colors?.alias().DetachFromDisposeScope();
        Normals = normals?.alias().DetachFromDisposeScope();
    }

    /// <summary>Vertex positions <c>[V, 3]</c>.</summary>
    public Tensor Vertices { get; }

    /// <summary>Triangles <c>[F, 3]</c>, int64 indices into <see cref="Vertices"/>.</summary>
    public Tensor Faces { get; }

    /// <summary>Per-vertex colours <c>[V, 3]</c> (linear RGB, [0, 1]), or null.</summary>
    public Tensor? Colors { get; }

    /// <summary>Per-vertex unit normals <c>[V, 3]</c>, or null.</summary>
    public Tensor? Normals { get; }

    /// <summary>Number of vertices.</summary>
    public long VertexCount => Vertices.shape[0];

    /// <summary>Number of triangles.</summary>
    public long FaceCount => Faces.shape[0];

    /// <summary>Whether the mesh has no triangles.</summary>
    public bool IsEmpty => FaceCount == 0;

    /// <summary>An empty mesh (no vertices, no faces) of the given dtype.</summary>
    public static Mesh Empty(ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        return new Mesh(torch.zeros(0, 3, dtype: dtype, device: device), torch.zeros(0, 3, dtype: ScalarType.Int64, device: device));
    }

    /// <summary>
    /// Area-weighted vertex normals: the sum of <c>cross(p1 − p0, p2 − p0)</c> of the faces around each vertex, normalised
    /// (<c>[V, 3]</c>; a vertex on no face of positive area gets 0). The caller owns the result.
    /// </summary>
    public Tensor ComputeVertexNormals()
    {
        using var scope = torch.NewDisposeScope();
        var n = torch.zeros_like(Vertices);
        if (FaceCount > 0)
        {
            var fn = FaceCross();
            for (int k = 0; k < 3; k++) n.index_add_(0, Faces[.., k], fn, 1.0);
        }
        var len = n.norm(1, keepdim: true);
        return torch.where(len > 0, n / len.clamp_min(1e-30), torch.zeros_like(n)).MoveToOuterDisposeScope();
    }

    /// <summary>A new mesh with the same tensors and <see cref="ComputeVertexNormals"/> as its normals.</summary>
    public Mesh WithVertexNormals()
    {
        using var scope = torch.NewDisposeScope();
        return new Mesh(Vertices, Faces, Colors, ComputeVertexNormals());
    }

    /// <summary>A new mesh with the same tensors and the given colours <c>[V, 3]</c> (or none).</summary>
    public Mesh WithColors(Tensor? colors) => new(Vertices, Faces, colors, Normals);

    /// <summary>
    /// A new mesh without degenerate faces: faces that repeat a vertex index, or whose area is not above
    /// <paramref name="minArea"/> (0 keeps every face of positive area). Vertices are kept as they are.
    /// </summary>
    public Mesh WithoutDegenerateFaces(double minArea = 0)
    {
        if (!(minArea >= 0) || !double.IsFinite(minArea))
            throw new ArgumentException($"minArea must be a finite value >= 0; found {minArea}", nameof(minArea));
        using var scope = torch.NewDisposeScope();
        if (FaceCount == 0) return new Mesh(Vertices, Faces, Colors, Normals);
        var f = Faces;
        var distinct = f[.., 0].ne(f[.., 1]).logical_and(f[.., 1].ne(f[.., 2])).logical_and(f[.., 0].ne(f[.., 2]));
        var area = FaceCross().norm(1) * 0.5;
        var keep = distinct.logical_and(area > minArea);
        return new Mesh(Vertices, f[keep], Colors, Normals);
    }

    /// <summary>A new mesh with every tensor converted to <paramref name="dtype"/> (faces stay int64) and moved to <paramref name="device"/>.</summary>
    public Mesh To(ScalarType dtype, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        device ??= Vertices.device;
        return new Mesh(Vertices.to(dtype, device), Faces.to(ScalarType.Int64, device), Colors?.to(dtype, device), Normals?.to(dtype, device));
    }

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        Vertices.Dispose();
        Faces.Dispose();
        Colors?.Dispose();
        Normals?.Dispose();
    }

    /// <summary><c>cross(p1 − p0, p2 − p0)</c> per face, <c>[F, 3]</c> (twice the area times the unit normal).</summary>
    internal Tensor FaceCross()
    {
        var p0 = Vertices.index_select(0, Faces[.., 0]);
        var p1 = Vertices.index_select(0, Faces[.., 1]);
        var p2 = Vertices.index_select(0, Faces[.., 2]);
        return torch.linalg.cross(p1 - p0, p2 - p0);
    }

    private static void CheckAttribute(Tensor? t, string name, Tensor vertices)
    {
        if (t is null) return;
        if (t.dim() != 2 || t.shape[0] != vertices.shape[0] || t.shape[1] != 3)
            throw new ArgumentException($"{name} must be [{vertices.shape[0]}, 3] (one row per vertex); found [{string.Join(", ", t.shape)}]", name);
        if (t.dtype != vertices.dtype)
            throw new ArgumentException($"{name} has dtype {t.dtype}, expected {vertices.dtype} (the dtype of vertices)", name);
        if (!SameDevice(t.device, vertices.device))
            throw new ArgumentException($"{name} is on {t.device}, expected {vertices.device} (the device of vertices)", name);
    }

    private static void CheckFinite(Tensor t, string name)
    {
        if (t.numel() == 0) return;
        using var scope = torch.NewDisposeScope();
        var bad = t.isfinite().all(1).logical_not();
        if (bad.any().item<bool>())
        {
            long count = bad.sum().item<long>();
            long first = bad.nonzero()[0, 0].item<long>();
            throw new ArgumentException($"{name} holds {count} row(s) with NaN or infinite values (first: row {first})", name);
        }
    }

    private static bool SameDevice(Device a, Device b) => a.type == b.type && a.index == b.index;
}
