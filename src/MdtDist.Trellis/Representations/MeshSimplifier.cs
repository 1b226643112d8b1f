using TorchSharp;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// Quadric-error edge-collapse decimation (Garland &amp; Heckbert 1997): repeatedly collapses the edge whose merged
/// vertex has the smallest sum of squared distances to the planes of the original faces around it, until the mesh has
/// at most the target number of triangles or no edge can be collapsed safely.
/// </summary>
/// <remarks>
/// <para>Why our own: no maintained .NET decimation library is served on NuGet to this project. The implementation is
/// the textbook one: area-weighted face quadrics; boundary edges get a perpendicular plane with a large weight so open
/// borders keep their shape; the merged vertex is the quadric's minimiser (or the best of the endpoints and the
/// midpoint when the 3×3 system is singular); a collapse is refused when it would make the surface non-manifold (link
/// condition) or flip a face; colours are interpolated along the edge; normals are recomputed by the caller.</para>
/// <para>Deterministic: ties in the queue are broken by edge endpoints, so the same mesh always gives the same result.</para>
/// </remarks>
public static class MeshSimplifier
{
    private const double BoundaryWeight = 1e3;

    /// <summary>Simplifies <paramref name="mesh"/> to at most <paramref name="targetFaceCount"/> triangles when possible.</summary>
    /// <returns>A new mesh (float dtype and device of the input; unused vertices removed; normals recomputed if the input had them).</returns>
    public static Mesh Simplify(Mesh mesh, long targetFaceCount)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        if (targetFaceCount < 1) throw new ArgumentException($"targetFaceCount must be >= 1; found {targetFaceCount}", nameof(targetFaceCount));
        var data = Simplify(MeshArrays.From(mesh), targetFaceCount).WithoutDegenerateIndices().Compacted();
        if (mesh.Normals is not null) data = data.WithComputedNormals();
        return data.ToMesh(mesh.Vertices.dtype, mesh.Vertices.device);
    }

    internal static MeshArrays Simplify(MeshArrays input, long targetFaceCount)
    {
        var m = input.WithoutDegenerateIndices();
        int nv = m.VertexCount, nf = m.FaceCount;
        if (nf <= targetFaceCount) return m;
        var pos = (double[])m.Positions.Clone();
        var col = m.Colors is null ? null : (double[])m.Colors.Clone();
        var faces = (int[])m.Faces.Clone();
        var faceAlive = new bool[nf];
        Array.Fill(faceAlive, true);
        var vertFaces = new List<int>[nv];
        for (int i = 0; i < nv; i++) vertFaces[i] = new List<int>(6);
        for (int f = 0; f < nf; f++)
            for (int k = 0; k < 3; k++) vertFaces[faces[3 * f + k]].Add(f);

        // quadrics: 10 coefficients of the symmetric 4x4 [a² ab ac ad; b² bc bd; c² cd; d²]
        var q = new double[nv * 10];
        var edgeFaces = new Dictionary<long, int>(3 * nf / 2, EdgeKeyComparer.Instance);
        for (int f = 0; f < nf; f++)
        {
            var (nx, ny, nz, area) = FaceNormal(pos, faces, f);
            if (area <= 0) continue;
            int a = faces[3 * f];
            double d = -(nx * pos[3 * a] + ny * pos[3 * a + 1] + nz * pos[3 * a + 2]);
            for (int k = 0; k < 3; k++) AddPlane(q, faces[3 * f + k], nx, ny, nz, d, area);
        }
        for (int f = 0; f < nf; f++)
            for (int k = 0; k < 3; k++)
            {
                long key = Key(faces[3 * f + k], faces[3 * f + (k + 1) % 3]);
                edgeFaces[key] = edgeFaces.TryGetValue(key, out int c) ? c + 1 : 1;
            }
        for (int f = 0; f < nf; f++)
        {
            var (nx, ny, nz, _) = FaceNormal(pos, faces, f);
            for (int k = 0; k < 3; k++)
            {
                int a = faces[3 * f + k], b = faces[3 * f + (k + 1) % 3];
                if (edgeFaces[Key(a, b)] != 1) continue;
                // plane through the border edge, perpendicular to the face
                double ex = pos[3 * b] - pos[3 * a], ey = pos[3 * b + 1] - pos[3 * a + 1], ez = pos[3 * b + 2] - pos[3 * a + 2];
                double px = ey * nz - ez * ny, py = ez * nx - ex * nz, pz = ex * ny - ey * nx;
                double len = Math.Sqrt(px * px + py * py + pz * pz);
                if (len <= 0) continue;
                px /= len; py /= len; pz /= len;
                double d = -(px * pos[3 * a] + py * pos[3 * a + 1] + pz * pos[3 * a + 2]);
                double w = BoundaryWeight * (ex * ex + ey * ey + ez * ez);
                AddPlane(q, a, px, py, pz, d, w);
                AddPlane(q, b, px, py, pz, d, w);
            }
        }

        var version = new int[nv];
        var alive = new bool[nv];
        Array.Fill(alive, true);
        var heap = new PriorityQueue<(int A, int B, int VA, int VB), (double Cost, long Key)>();
        foreach (var key in edgeFaces.Keys.OrderBy(k => k))
        {
            int a = (int)(key >> 32), b = (int)(key & 0xffffffff);
            Push(heap, q, pos, a, b, version);
        }

        int faceCount = nf;
        var merged = new double[3];
        var neighA = new HashSet<int>();
        var neighB = new HashSet<int>();
        while (faceCount > targetFaceCount && heap.TryDequeue(out var e, out _))
        {
            int a = e.A, b = e.B;
            if (!alive[a] || !alive[b] || version[a] != e.VA || version[b] != e.VB) continue;
            // faces on the edge, and the link condition (common neighbours == faces on the edge)
            int shared = 0;
            foreach (int f in vertFaces[a]) if (faceAlive[f] && HasVertex(faces, f, b)) shared++;
            if (shared == 0) continue;
            Neighbours(vertFaces[a], faces, faceAlive, a, neighA);
            Neighbours(vertFaces[b], faces, faceAlive, b, neighB);
            neighA.IntersectWith(neighB);
            if (neighA.Count != shared) continue;
            if (DuplicatesAFace(faces, faceAlive, vertFaces[a], vertFaces[b], a, b)) continue;
            Optimal(q, pos, a, b, merged, out double t);
            if (Flips(pos, faces, faceAlive, vertFaces[a], a, b, merged) || Flips(pos, faces, faceAlive, vertFaces[b], b, a, merged)) continue;

            // collapse b into a
            pos[3 * a] = merged[0]; pos[3 * a + 1] = merged[1]; pos[3 * a + 2] = merged[2];
            if (col is not null)
                for (int k = 0; k < 3; k++) col[3 * a + k] = (1 - t) * col[3 * a + k] + t * col[3 * b + k];
            for (int k = 0; k < 10; k++) q[10 * a + k] += q[10 * b + k];
            foreach (int f in vertFaces[b])
            {
                if (!faceAlive[f]) continue;
                if (HasVertex(faces, f, a)) { faceAlive[f] = false; faceCount--; continue; }
                for (int k = 0; k < 3; k++) if (faces[3 * f + k] == b) faces[3 * f + k] = a;
                vertFaces[a].Add(f);
            }
            vertFaces[a].RemoveAll(f => !faceAlive[f]);
            vertFaces[b].Clear();
            alive[b] = false;
            version[a]++;
            version[b]++;
            // only a's quadric and position changed: its edges get fresh entries (the others' costs are unchanged;
            // the link and flip checks run again when an edge is popped)
            Neighbours(vertFaces[a], faces, faceAlive, a, neighA);
            foreach (int n in neighA.OrderBy(x => x)) Push(heap, q, pos, Math.Min(a, n), Math.Max(a, n), version);
        }

        var outFaces = new List<int>(3 * faceCount);
        for (int f = 0; f < nf; f++)
            if (faceAlive[f]) { outFaces.Add(faces[3 * f]); outFaces.Add(faces[3 * f + 1]); outFaces.Add(faces[3 * f + 2]); }
        return new MeshArrays(pos, outFaces.ToArray(), col, m.Normals, normalsStale: m.Normals is not null);
    }

    /// <summary>Whether moving b's faces onto a would recreate one of a's faces (a tetrahedron folding into two triangles).</summary>
    private static bool DuplicatesAFace(int[] faces, bool[] faceAlive, List<int> facesA, List<int> facesB, int a, int b)
    {
        var existing = new HashSet<(int, int)>();
        foreach (int f in facesA)
        {
            if (!faceAlive[f] || HasVertex(faces, f, b)) continue;
            var (x, y) = Others(faces, f, a);
            existing.Add(x < y ? (x, y) : (y, x));
        }
        foreach (int f in facesB)
        {
            if (!faceAlive[f] || HasVertex(faces, f, a)) continue;
            var (x, y) = Others(faces, f, b);
            if (existing.Contains(x < y ? (x, y) : (y, x))) return true;
        }
        return false;
    }

    private static (int, int) Others(int[] faces, int f, int v)
    {
        int k = faces[3 * f] == v ? 0 : faces[3 * f + 1] == v ? 1 : 2;
        return (faces[3 * f + (k + 1) % 3], faces[3 * f + (k + 2) % 3]);
    }

    /// <summary>
    /// Hashes an edge key <c>(min &lt;&lt; 32) | max</c> by Fibonacci multiplication. <c>long.GetHashCode</c> is
    /// <c>low ^ high</c>, which maps the edges of a mesh whose neighbouring vertices have nearby indices onto a handful of
    /// values (every grid edge (i, i + 1) gives 1 or 3…): the dictionary then degrades to linear scans, which made
    /// setting up a 200k-triangle mesh take minutes.
    /// </summary>
    private sealed class EdgeKeyComparer : IEqualityComparer<long>
    {
        public static readonly EdgeKeyComparer Instance = new();

        public bool Equals(long x, long y) => x == y;

        public int GetHashCode(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> 32);
    }

    private static long Key(int a, int b) => a < b ? ((long)a << 32) | (uint)b : ((long)b << 32) | (uint)a;

    private static bool HasVertex(int[] faces, int f, int v) => faces[3 * f] == v || faces[3 * f + 1] == v || faces[3 * f + 2] == v;

    private static void Neighbours(List<int> fs, int[] faces, bool[] faceAlive, int v, HashSet<int> into)
    {
        into.Clear();
        foreach (int f in fs)
        {
            if (!faceAlive[f]) continue;
            for (int k = 0; k < 3; k++) if (faces[3 * f + k] != v) into.Add(faces[3 * f + k]);
        }
    }

    private static (double X, double Y, double Z, double Area) FaceNormal(double[] p, int[] faces, int f)
    {
        int a = faces[3 * f], b = faces[3 * f + 1], c = faces[3 * f + 2];
        double ux = p[3 * b] - p[3 * a], uy = p[3 * b + 1] - p[3 * a + 1], uz = p[3 * b + 2] - p[3 * a + 2];
        double vx = p[3 * c] - p[3 * a], vy = p[3 * c + 1] - p[3 * a + 1], vz = p[3 * c + 2] - p[3 * a + 2];
        double cx = uy * vz - uz * vy, cy = uz * vx - ux * vz, cz = ux * vy - uy * vx;
        double len = Math.Sqrt(cx * cx + cy * cy + cz * cz);
        return len > 0 ? (cx / len, cy / len, cz / len, len / 2) : (0, 0, 0, 0);
    }

    private static void AddPlane(double[] q, int v, double a, double b, double c, double d, double w)
    {
        int o = 10 * v;
        q[o] += w * a * a; q[o + 1] += w * a * b; q[o + 2] += w * a * c; q[o + 3] += w * a * d;
        q[o + 4] += w * b * b; q[o + 5] += w * b * c; q[o + 6] += w * b * d;
        q[o + 7] += w * c * c; q[o + 8] += w * c * d;
        q[o + 9] += w * d * d;
    }

    private static double Error(double[] q, int a, int b, double x, double y, double z)
    {
        double Q(int k) => q[10 * a + k] + q[10 * b + k];
        return Q(0) * x * x + 2 * Q(1) * x * y + 2 * Q(2) * x * z + 2 * Q(3) * x
             + Q(4) * y * y + 2 * Q(5) * y * z + 2 * Q(6) * y
             + Q(7) * z * z + 2 * Q(8) * z + Q(9);
    }

    /// <summary>The merged position minimising the summed quadric, and its parameter along a→b (for colours).</summary>
    private static void Optimal(double[] q, double[] p, int a, int b, double[] result, out double t)
    {
        double Q(int k) => q[10 * a + k] + q[10 * b + k];
        double m00 = Q(0), m01 = Q(1), m02 = Q(2), m11 = Q(4), m12 = Q(5), m22 = Q(7);
        double r0 = -Q(3), r1 = -Q(6), r2 = -Q(8);
        double c00 = m11 * m22 - m12 * m12, c01 = m02 * m12 - m01 * m22, c02 = m01 * m12 - m02 * m11;
        double det = m00 * c00 + m01 * c01 + m02 * c02;
        double scale = Math.Abs(m00) + Math.Abs(m11) + Math.Abs(m22);
        double ax = p[3 * a], ay = p[3 * a + 1], az = p[3 * a + 2], bx = p[3 * b], by = p[3 * b + 1], bz = p[3 * b + 2];
        double ex = bx - ax, ey = by - ay, ez = bz - az, len2 = ex * ex + ey * ey + ez * ez;
        if (scale > 0 && Math.Abs(det) > 1e-10 * scale * scale * scale)
        {
            double c11 = m00 * m22 - m02 * m02, c12 = m01 * m02 - m00 * m12, c22 = m00 * m11 - m01 * m01;
            double x = (c00 * r0 + c01 * r1 + c02 * r2) / det;
            double y = (c01 * r0 + c11 * r1 + c12 * r2) / det;
            double z = (c02 * r0 + c12 * r1 + c22 * r2) / det;
            // keep the merged vertex near the edge: a far minimiser of a nearly flat quadric is not a safe collapse
            double dx = x - (ax + bx) / 2, dy = y - (ay + by) / 2, dz = z - (az + bz) / 2;
            if (dx * dx + dy * dy + dz * dz <= 4 * len2)
            {
                result[0] = x; result[1] = y; result[2] = z;
                t = len2 > 0 ? Math.Clamp(((x - ax) * ex + (y - ay) * ey + (z - az) * ez) / len2, 0, 1) : 0.5;
                return;
            }
        }
        double ea = Error(q, a, b, ax, ay, az), eb = Error(q, a, b, bx, by, bz);
        double em = Error(q, a, b, (ax + bx) / 2, (ay + by) / 2, (az + bz) / 2);
        if (em <= ea && em <= eb) { result[0] = (ax + bx) / 2; result[1] = (ay + by) / 2; result[2] = (az + bz) / 2; t = 0.5; }
        else if (ea <= eb) { result[0] = ax; result[1] = ay; result[2] = az; t = 0; }
        else { result[0] = bx; result[1] = by; result[2] = bz; t = 1; }
    }

    /// <summary>Whether moving <paramref name="v"/> to <paramref name="target"/> flips or collapses a face of its that does not hold <paramref name="other"/>.</summary>
    private static bool Flips(double[] p, int[] faces, bool[] faceAlive, List<int> fs, int v, int other, double[] target)
    {
        foreach (int f in fs)
        {
            if (!faceAlive[f] || HasVertex(faces, f, other)) continue;
            var before = FaceNormal(p, faces, f);
            double ox = p[3 * v], oy = p[3 * v + 1], oz = p[3 * v + 2];
            p[3 * v] = target[0]; p[3 * v + 1] = target[1]; p[3 * v + 2] = target[2];
            var after = FaceNormal(p, faces, f);
            p[3 * v] = ox; p[3 * v + 1] = oy; p[3 * v + 2] = oz;
            if (after.Area <= 0) return true;
            if (before.Area > 0 && before.X * after.X + before.Y * after.Y + before.Z * after.Z < 0.2) return true;
        }
        return false;
    }

    private static void Push(PriorityQueue<(int, int, int, int), (double, long)> heap, double[] q, double[] p, int a, int b, int[] version)
    {
        var r = new double[3];
        Optimal(q, p, a, b, r, out _);
        double cost = Math.Max(0, Error(q, a, b, r[0], r[1], r[2]));
        heap.Enqueue((a, b, version[a], version[b]), (cost, Key(a, b)));
    }
}
