using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// What FlexiCubes extracts from one sample: TRELLIS's <c>MeshExtractResult</c> (vertices, faces, per-vertex attributes,
/// face normals) plus the extraction's intermediate sets and, in training mode, its regularisers.
/// </summary>
/// <remarks>
/// Vertices lie in TRELLIS's <c>[-0.5, 0.5]³</c> box, z up. Faces are counter-clockwise seen from positive sdf (outside).
/// The instance owns its tensors (detached from dispose scopes); dispose it to free them.
/// </remarks>
public sealed class FlexiCubesResult : IDisposable
{
    internal FlexiCubesResult(Tensor vertices, Tensor faces, Tensor? vertexAttributes, Tensor surfaceCubes, Tensor caseIds,
        Tensor? devLoss = null, Tensor? consistencyLoss = null, Tensor? regLoss = null, Tensor? tsdfVertices = null, Tensor? tsdfValues = null)
    {
        Vertices = Own(vertices)!;
        Faces = Own(faces)!;
        VertexAttributes = Own(vertexAttributes);
        SurfaceCubes = Own(surfaceCubes)!;
        CaseIds = Own(caseIds)!;
        using (var scope = torch.NewDisposeScope())
            FaceNormals = Own(ComputeFaceNormals(Vertices, Faces).MoveToOuterDisposeScope())!;
        DevLoss = Own(devLoss);
        ConsistencyLoss = Own(consistencyLoss);
        RegLoss = Own(regLoss);
        TsdfVertices = Own(tsdfVertices);
        TsdfValues = Own(tsdfValues);
    }

    /// <summary>Vertex positions <c>[V, 3]</c> (training mode: the dual vertices, then one centre vertex per quad).</summary>
    public Tensor Vertices { get; }

    /// <summary>Triangles <c>[F, 3]</c>, int64 (inference: 2 per quad; training: 4 per quad around its centre).</summary>
    public Tensor Faces { get; }

    /// <summary>
    /// Per-vertex attributes <c>[V, 6]</c> (after the sigmoid, in [0, 1]): RGB colour, then TRELLIS's normal-map channels;
    /// null when the decoder has no colour.
    /// </summary>
    public Tensor? VertexAttributes { get; }

    /// <summary>Unit face normals <c>normalize(cross(p1 − p0, p2 − p0))</c>, <c>[F, 3]</c> (0 for zero-area faces).</summary>
    public Tensor FaceNormals { get; }

    /// <summary>Linear ids <c>(x·res + y)·res + z</c> of the surface cubes (1..7 corners inside), increasing, <c>[S]</c>.</summary>
    public Tensor SurfaceCubes { get; }

    /// <summary>The marching-cubes case of each surface cube after the ambiguity fix, <c>[S]</c>.</summary>
    public Tensor CaseIds { get; }

    /// <summary>Training only: FlexiCubes's <c>L_dev</c>, one value per (dual vertex, edge) entry; null at inference.</summary>
    public Tensor? DevLoss { get; }

    /// <summary>Training only: <c>con_loss</c> of the vertex averaging (a scalar); null at inference.</summary>
    public Tensor? ConsistencyLoss { get; }

    /// <summary>Training only: TRELLIS's <c>reg_loss</c> (a scalar); null at inference.</summary>
    public Tensor? RegLoss { get; }

    /// <summary>Training only: TRELLIS's <c>tsdf_v</c>, the deformed cube vertices <c>[V', 3]</c>; null at inference.</summary>
    public Tensor? TsdfVertices { get; }

    /// <summary>Training only: TRELLIS's <c>tsdf_s</c>, the cube vertices' sdf <c>[V']</c>; null at inference.</summary>
    public Tensor? TsdfValues { get; }

    /// <summary>Whether the extraction found a surface (TRELLIS's <c>success</c>: at least one vertex and one face).</summary>
    public bool Success => Vertices.shape[0] > 0 && Faces.shape[0] > 0;

    /// <summary>
    /// The extracted surface as a <see cref="Mesh"/>: the same vertices and faces, the colour channels
    /// (<see cref="VertexAttributes"/>[:, 0:3], as TRELLIS's <c>to_trimesh</c> takes them) when present, and area-weighted
    /// vertex normals when <paramref name="withNormals"/>.
    /// </summary>
    public Mesh ToMesh(bool withNormals = true)
    {
        using var scope = torch.NewDisposeScope();
        var colors = VertexAttributes?[.., 0..3].contiguous();
        var mesh = new Mesh(Vertices, Faces, colors);
        if (!withNormals) return mesh;
        using (mesh) return mesh.WithVertexNormals();
    }

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        foreach (var t in new[] { Vertices, Faces, VertexAttributes, SurfaceCubes, CaseIds, FaceNormals, DevLoss, ConsistencyLoss, RegLoss, TsdfVertices, TsdfValues })
            t?.Dispose();
    }

    /// <summary>TRELLIS's <c>comput_face_normals</c>: <c>F.normalize(cross(v1 − v0, v2 − v0))</c> with eps 1e-12.</summary>
    internal static Tensor ComputeFaceNormals(Tensor vertices, Tensor faces)
    {
        if (faces.shape[0] == 0) return torch.zeros(new long[] { 0, 3 }, dtype: vertices.dtype, device: vertices.device);
        var v0 = vertices.index_select(0, faces[.., 0]);
        var v1 = vertices.index_select(0, faces[.., 1]);
        var v2 = vertices.index_select(0, faces[.., 2]);
        return nn.functional.normalize(torch.linalg.cross(v1 - v0, v2 - v0), p: 2, dim: -1, eps: 1e-12);
    }

    private static Tensor? Own(Tensor? t) => t?.DetachFromDisposeScope();
}
