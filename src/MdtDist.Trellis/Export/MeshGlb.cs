using System.Numerics;
using MdtDist.Trellis.Representations;
using SharpGLTF.Memory;
using SharpGLTF.Schema2;
using TorchSharp;
using static TorchSharp.torch;
using TrellisMesh = MdtDist.Trellis.Representations.Mesh;

namespace MdtDist.Trellis.Export;

/// <summary>Options of <see cref="MeshGlb"/>.</summary>
public sealed record GlbExportOptions
{
    /// <summary>
    /// Rotate TRELLIS's z-up coordinates into glTF's y-up as TRELLIS's <c>to_glb</c> does: <c>(x, y, z) → (x, z, −y)</c>
    /// (a proper rotation, so the winding is kept). Default true.
    /// </summary>
    public bool ZUpToYUp { get; init; } = true;

    /// <summary>Write the mesh's vertex colours (<c>COLOR_0</c>) when it has them. Default true.</summary>
    public bool IncludeColors { get; init; } = true;

    /// <summary>
    /// The mesh's colours are sRGB-encoded (what TRELLIS's decoders produce: they are trained against sRGB renders)
    /// and are converted to the linear values glTF's <c>COLOR_0</c> holds. False writes them unchanged (TRELLIS's own
    /// trimesh export does that, which looks washed out in spec-following viewers). Default true.
    /// </summary>
    public bool ColorsAreSrgb { get; init; } = true;

    /// <summary>Write vertex normals (<c>NORMAL</c>): the mesh's own, or area-weighted ones computed here. Default true.</summary>
    public bool IncludeNormals { get; init; } = true;

    /// <summary>
    /// Simplify to at most this many triangles with <see cref="MeshSimplifier"/> (quadric edge collapse) before writing;
    /// null keeps every face. TRELLIS's <c>to_glb</c> default <c>simplify=0.95</c> is <c>0.05 × faces</c>.
    /// </summary>
    public long? TargetFaceCount { get; init; }

    /// <summary>Name of the glTF mesh and node. Default "mesh".</summary>
    public string Name { get; init; } = "mesh";
}

/// <summary>
/// Writes a <see cref="TrellisMesh"/> as a binary glTF 2.0 file (<c>.glb</c>) with SharpGLTF: one triangle primitive with
/// <c>POSITION</c> (float, with exact min/max), optional <c>NORMAL</c> (unit float) and <c>COLOR_0</c> (linear float RGB),
/// 16- or 32-bit indices, and a matte PBR material (metallic 0, roughness 1, as TRELLIS's export).
/// </summary>
/// <remarks>
/// Before writing, faces that repeat a vertex are dropped and vertices no face uses are removed (glTF validators flag
/// both). A mesh with no face left gives a valid GLB with a scene and an empty node (no mesh), so a failed extraction
/// still yields a file every viewer opens. Files are written atomically (temp file + rename): a failure never leaves a
/// partial file.
/// </remarks>
public static class MeshGlb
{
    /// <summary>Writes <paramref name="mesh"/> to <paramref name="path"/> (atomic).</summary>
    /// <exception cref="ArgumentException">Bad path or options (the mesh validates itself on construction).</exception>
    public static void Save(string path, TrellisMesh mesh, GlbExportOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var bytes = ToBytes(mesh, options);
        MdtDist.Core.IO.AtomicFile.Write(Path.GetFullPath(path), fs => fs.Write(bytes));
    }

    /// <summary>The GLB file of <paramref name="mesh"/> as bytes.</summary>
    public static byte[] ToBytes(TrellisMesh mesh, GlbExportOptions? options = null)
    {
        var model = ToModel(mesh, options);
        using var ms = new MemoryStream();
        model.WriteGLB(ms);
        return ms.ToArray();
    }

    /// <summary>The SharpGLTF model of <paramref name="mesh"/> (for callers that add more to the scene).</summary>
    public static ModelRoot ToModel(TrellisMesh mesh, GlbExportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        options ??= new GlbExportOptions();
        if (options.TargetFaceCount is long t && t < 1)
            throw new ArgumentException($"TargetFaceCount must be >= 1 (or null to keep every face); found {t}", nameof(options));
        if (string.IsNullOrEmpty(options.Name)) throw new ArgumentException("Name must not be empty", nameof(options));

        var data = MeshArrays.From(mesh, options.IncludeColors, options.IncludeNormals);
        if (options.TargetFaceCount is long target && data.FaceCount > target)
            data = MeshSimplifier.Simplify(data, target);
        data = data.WithoutDegenerateIndices().Compacted();
        if (options.IncludeNormals && data.FaceCount > 0 && (data.Normals is null || data.NormalsStale))
            data = data.WithComputedNormals();

        var model = ModelRoot.CreateModel();
        var scene = model.UseScene("scene");
        var node = scene.CreateNode(options.Name);
        if (data.FaceCount == 0) return model;

        int v = data.VertexCount;
        var positions = new Vector3[v];
        var normals = options.IncludeNormals ? new Vector3[v] : null;
        var colors = options.IncludeColors && data.Colors is not null ? new Vector3[v] : null;
        for (int i = 0; i < v; i++)
        {
            positions[i] = Orient(data.Positions, i, options.ZUpToYUp);
            if (normals is not null) normals[i] = UnitOrUp(Orient(data.Normals!, i, options.ZUpToYUp));
            if (colors is not null)
                colors[i] = new Vector3(Color(data.Colors![3 * i], options.ColorsAreSrgb), Color(data.Colors[3 * i + 1], options.ColorsAreSrgb),
                    Color(data.Colors[3 * i + 2], options.ColorsAreSrgb));
        }

        var material = model.CreateMaterial("matte");
        material.InitializePBRMetallicRoughness();
        material.DoubleSided = false;
        var mr = material.FindChannel("MetallicRoughness");
        if (mr is MaterialChannel m)
        {
            m.SetFactor("MetallicFactor", 0f);
            m.SetFactor("RoughnessFactor", 1f);
        }

        var gmesh = model.CreateMesh(options.Name);
        var prim = gmesh.CreatePrimitive();
        prim.DrawPrimitiveType = PrimitiveType.TRIANGLES;
        prim.Material = material;
        prim.SetVertexAccessor("POSITION", Vec3Accessor(model, positions));
        if (normals is not null) prim.SetVertexAccessor("NORMAL", Vec3Accessor(model, normals));
        if (colors is not null) prim.SetVertexAccessor("COLOR_0", Vec3Accessor(model, colors));
        prim.SetIndexAccessor(IndexAccessor(model, data.Faces, v));
        node.Mesh = gmesh;
        return model;
    }

    private static Accessor Vec3Accessor(ModelRoot model, Vector3[] values)
    {
        var bytes = new byte[values.Length * 12];
        var span = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan());
        for (int i = 0; i < values.Length; i++)
        {
            span[3 * i] = values[i].X;
            span[3 * i + 1] = values[i].Y;
            span[3 * i + 2] = values[i].Z;
        }
        var view = model.UseBufferView(bytes, 0, bytes.Length, 12, BufferMode.ARRAY_BUFFER);
        var acc = model.CreateAccessor();
        acc.SetVertexData(view, 0, values.Length, new AttributeFormat(DimensionType.VEC3, EncodingType.FLOAT, false));
        return acc;
    }

    private static Accessor IndexAccessor(ModelRoot model, int[] faces, int vertexCount)
    {
        bool wide = vertexCount > ushort.MaxValue;   // 65535 is the primitive-restart value of 16-bit indices
        int size = wide ? 4 : 2;
        var bytes = new byte[faces.Length * size];
        for (int i = 0; i < faces.Length; i++)
        {
            if (wide) BitConverter.TryWriteBytes(bytes.AsSpan(4 * i), (uint)faces[i]);
            else BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), (ushort)faces[i]);
        }
        // glTF requires every buffer view to start on a 4-byte boundary and its length to be padded by the writer
        var view = model.UseBufferView(bytes, 0, bytes.Length, 0, BufferMode.ELEMENT_ARRAY_BUFFER);
        var acc = model.CreateAccessor();
        acc.SetIndexData(view, 0, faces.Length, wide ? IndexEncodingType.UNSIGNED_INT : IndexEncodingType.UNSIGNED_SHORT);
        return acc;
    }

    /// <summary>Position <paramref name="i"/> of a flat xyz array, rotated from z-up to y-up when asked.</summary>
    private static Vector3 Orient(double[] xyz, int i, bool zUpToYUp)
    {
        double x = xyz[3 * i], y = xyz[3 * i + 1], z = xyz[3 * i + 2];
        return zUpToYUp ? new Vector3((float)x, (float)z, (float)-y) : new Vector3((float)x, (float)y, (float)z);
    }

    /// <summary>A unit vector in float32 (glTF validators require |n| = 1 within 5e-4); (0, 1, 0) for a zero normal.</summary>
    private static Vector3 UnitOrUp(Vector3 n)
    {
        float len = n.Length();
        return len > 1e-20f && float.IsFinite(len) ? n / len : Vector3.UnitY;
    }

    private static float Color(double c, bool srgb)
    {
        c = Math.Clamp(c, 0.0, 1.0);
        if (srgb) c = c <= 0.04045 ? c / 12.92 : Math.Pow((c + 0.055) / 1.055, 2.4);
        return (float)c;
    }
}
