using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// A mesh as flat CPU arrays (float64 positions/colours/normals, int32 faces), for the element-wise work that tensors do
/// badly: decimation, compaction, file writing.
/// </summary>
internal sealed class MeshArrays
{
    public MeshArrays(double[] positions, int[] faces, double[]? colors, double[]? normals, bool normalsStale = false)
    {
        Positions = positions;
        Faces = faces;
        Colors = colors;
        Normals = normals;
        NormalsStale = normalsStale;
    }

    /// <summary>xyz per vertex, <c>3V</c>.</summary>
    public double[] Positions { get; }

    /// <summary>Three vertex indices per triangle, <c>3F</c>.</summary>
    public int[] Faces { get; }

    /// <summary>RGB per vertex, <c>3V</c>, or null.</summary>
    public double[]? Colors { get; }

    /// <summary>Normal per vertex, <c>3V</c>, or null.</summary>
    public double[]? Normals { get; }

    /// <summary>Whether <see cref="Normals"/> no longer match the geometry (after decimation).</summary>
    public bool NormalsStale { get; }

    public int VertexCount => Positions.Length / 3;

    public int FaceCount => Faces.Length / 3;

    public static MeshArrays From(Mesh mesh, bool includeColors = true, bool includeNormals = true)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        if (mesh.VertexCount > int.MaxValue / 3 || mesh.FaceCount > int.MaxValue / 3)
            throw new ArgumentException($"mesh too large for export: {mesh.VertexCount} vertices, {mesh.FaceCount} faces", nameof(mesh));
        using var scope = torch.NewDisposeScope();
        return new MeshArrays(
            Doubles(mesh.Vertices),
            mesh.FaceCount == 0 ? Array.Empty<int>() : mesh.Faces.to(ScalarType.Int32).cpu().contiguous().data<int>().ToArray(),
            includeColors && mesh.Colors is not null ? Doubles(mesh.Colors) : null,
            includeNormals && mesh.Normals is not null ? Doubles(mesh.Normals) : null);
    }

    public Mesh ToMesh(ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        Tensor T(double[] a) => torch.tensor(a, new long[] { a.Length / 3, 3 }, dtype: ScalarType.Float64).to(dtype, device ?? torch.CPU);
        var faces = torch.tensor(Faces.Select(i => (long)i).ToArray(), new long[] { FaceCount, 3 }, dtype: ScalarType.Int64).to(device ?? torch.CPU);
        return new Mesh(T(Positions), faces, Colors is null ? null : T(Colors), Normals is null || NormalsStale ? null : T(Normals));
    }

    /// <summary>Drops faces that repeat a vertex index.</summary>
    public MeshArrays WithoutDegenerateIndices()
    {
        var kept = new List<int>(Faces.Length);
        for (int f = 0; f < FaceCount; f++)
        {
            int a = Faces[3 * f], b = Faces[3 * f + 1], c = Faces[3 * f + 2];
            if (a == b || b == c || a == c) continue;
            kept.Add(a); kept.Add(b); kept.Add(c);
        }
        return kept.Count == Faces.Length ? this : new MeshArrays(Positions, kept.ToArray(), Colors, Normals, NormalsStale);
    }

    /// <summary>Removes vertices no face uses (vertex order otherwise kept).</summary>
    public MeshArrays Compacted()
    {
        var map = new int[VertexCount];
        Array.Fill(map, -1);
        foreach (int i in Faces) map[i] = 0;
        int n = 0;
        for (int i = 0; i < map.Length; i++) if (map[i] == 0) map[i] = n++;
        if (n == VertexCount) return this;
        double[] Pick(double[] a)
        {
            var r = new double[3 * n];
            for (int i = 0; i < map.Length; i++)
                if (map[i] >= 0) { r[3 * map[i]] = a[3 * i]; r[3 * map[i] + 1] = a[3 * i + 1]; r[3 * map[i] + 2] = a[3 * i + 2]; }
            return r;
        }
        var faces = new int[Faces.Length];
        for (int i = 0; i < faces.Length; i++) faces[i] = map[Faces[i]];
        return new MeshArrays(Pick(Positions), faces, Colors is null ? null : Pick(Colors), Normals is null ? null : Pick(Normals), NormalsStale);
    }

    /// <summary>Area-weighted vertex normals (sum of face cross products, normalised; 0 where that sum is 0).</summary>
    public MeshArrays WithComputedNormals()
    {
        var n = new double[Positions.Length];
        var p = Positions;
        for (int f = 0; f < FaceCount; f++)
        {
            int a = Faces[3 * f], b = Faces[3 * f + 1], c = Faces[3 * f + 2];
            double ux = p[3 * b] - p[3 * a], uy = p[3 * b + 1] - p[3 * a + 1], uz = p[3 * b + 2] - p[3 * a + 2];
            double vx = p[3 * c] - p[3 * a], vy = p[3 * c + 1] - p[3 * a + 1], vz = p[3 * c + 2] - p[3 * a + 2];
            double cx = uy * vz - uz * vy, cy = uz * vx - ux * vz, cz = ux * vy - uy * vx;
            foreach (int i in new[] { a, b, c }) { n[3 * i] += cx; n[3 * i + 1] += cy; n[3 * i + 2] += cz; }
        }
        for (int i = 0; i < VertexCount; i++)
        {
            double len = Math.Sqrt(n[3 * i] * n[3 * i] + n[3 * i + 1] * n[3 * i + 1] + n[3 * i + 2] * n[3 * i + 2]);
            if (len > 0) { n[3 * i] /= len; n[3 * i + 1] /= len; n[3 * i + 2] /= len; }
        }
        return new MeshArrays(Positions, Faces, Colors, n);
    }

    private static double[] Doubles(Tensor t) =>
        t.numel() == 0 ? Array.Empty<double>() : t.to(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
}
