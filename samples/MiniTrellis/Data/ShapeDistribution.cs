namespace MiniTrellis.Data;

/// <summary>One voxelised shape: its class, its surface voxels and their colours.</summary>
/// <param name="Class">Class index into <see cref="ShapeDistribution.ClassNames"/>.</param>
/// <param name="Voxels">Surface voxels as (x, y, z) triples, y up, each in [0, <see cref="ShapeDistribution.Resolution"/>), row-major order.</param>
/// <param name="Colors">RGB in [0, 1] per voxel (<see cref="ShapeDistribution.ColorRule"/>), 3 floats per voxel.</param>
public sealed record ShapeSample(int Class, int[] Voxels, float[] Colors)
{
    /// <summary>Number of occupied voxels.</summary>
    public int Count => Voxels.Length / 3;
}

/// <summary>
/// A procedural distribution of 3D shapes, deterministic from a seed: nine classes with continuous parameters (size,
/// proportions, yaw, tilt, position), voxelised as surface shells (TRELLIS's kind of occupancy: the voxels the surface
/// passes through) on a <see cref="Resolution"/>³ grid, each voxel coloured by <see cref="ColorRule"/>.
/// </summary>
/// <remarks>
/// TRELLIS works on 64³; the miniature uses 16³ so that a sample has tens of transformer tokens (stage 1: a 4³ latent;
/// stage 2: about 40–110 tokens after the 2× patching of ~100–350 surface voxels), which is what fits thousands of
/// distillation steps into minutes on two CPU cores.
/// </remarks>
public static class ShapeDistribution
{
    /// <summary>Grid resolution of the occupancy (16³).</summary>
    public const int Resolution = 16;

    /// <summary>Seed offset of the fixed held-out split (training seeds are below it).</summary>
    public const long HeldOutSeedBase = 1_000_000_000;

    /// <summary>The class names, in class-index order.</summary>
    public static IReadOnlyList<string> ClassNames { get; } = new[] { "sphere", "box", "torus", "cylinder", "cone", "capsule", "arch", "table", "chair" };

    /// <summary>Number of classes.</summary>
    public static int ClassCount => ClassNames.Count;

    // Two base colours (upper part, lower part) per class.
    private static readonly float[][] Palette =
    {
        new[] { 0.90f, 0.25f, 0.20f, 0.60f, 0.10f, 0.10f }, // sphere: red
        new[] { 0.95f, 0.65f, 0.15f, 0.55f, 0.35f, 0.10f }, // box: orange
        new[] { 0.95f, 0.90f, 0.20f, 0.55f, 0.75f, 0.15f }, // torus: yellow / olive
        new[] { 0.25f, 0.80f, 0.30f, 0.10f, 0.45f, 0.15f }, // cylinder: green
        new[] { 0.20f, 0.80f, 0.85f, 0.10f, 0.40f, 0.60f }, // cone: cyan / teal
        new[] { 0.25f, 0.35f, 0.95f, 0.10f, 0.15f, 0.50f }, // capsule: blue
        new[] { 0.70f, 0.30f, 0.90f, 0.35f, 0.10f, 0.50f }, // arch: purple
        new[] { 0.75f, 0.55f, 0.35f, 0.35f, 0.22f, 0.12f }, // table: wood
        new[] { 0.95f, 0.45f, 0.70f, 0.30f, 0.30f, 0.30f }, // chair: pink seat/back, grey legs
    };

    /// <summary>
    /// The colour rule: a voxel of class k at height y (grid units) gets the class's upper-part colour when
    /// y ≥ the mean height of the shape's voxels, else its lower-part colour, scaled by a height shading
    /// <c>0.55 + 0.45·(y + 0.5)/R</c>. It needs only the class and the voxels, so it applies to generated shapes too.
    /// </summary>
    /// <param name="cls">Class index.</param>
    /// <param name="voxels">(x, y, z) triples.</param>
    /// <returns>RGB per voxel, 3 floats each.</returns>
    public static float[] ColorRule(int cls, ReadOnlySpan<int> voxels)
    {
        if ((uint)cls >= (uint)ClassCount) throw new ArgumentOutOfRangeException(nameof(cls), cls, $"class must be in [0, {ClassCount}).");
        int n = voxels.Length / 3;
        var colors = new float[n * 3];
        if (n == 0) return colors;
        double meanY = 0;
        for (int i = 0; i < n; i++) meanY += voxels[3 * i + 1];
        meanY /= n;
        var pal = Palette[cls];
        for (int i = 0; i < n; i++)
        {
            int y = voxels[3 * i + 1];
            int part = y >= meanY ? 0 : 1;
            float shade = (float)(0.55 + 0.45 * (y + 0.5) / Resolution);
            for (int c = 0; c < 3; c++) colors[3 * i + c] = pal[3 * part + c] * shade;
        }
        return colors;
    }

    /// <summary>The shape of class <paramref name="cls"/> drawn with seed <paramref name="seed"/> (deterministic).</summary>
    public static ShapeSample Sample(int cls, long seed)
    {
        if ((uint)cls >= (uint)ClassCount) throw new ArgumentOutOfRangeException(nameof(cls), cls, $"class must be in [0, {ClassCount}).");
        var rng = new Random(unchecked((int)(seed * 31 + cls * 1_000_003 + 17)) ^ (int)(seed >> 32));
        for (int attempt = 0; ; attempt++)
        {
            var inside = BuildInside(cls, rng);
            var voxels = Voxelise(inside);
            if (voxels.Length / 3 >= 12 || attempt > 20) return new ShapeSample(cls, voxels, ColorRule(cls, voxels));
        }
    }

    /// <summary>Training shape number <paramref name="index"/> of the stream seeded by <paramref name="seed"/>: classes cycle, parameters are drawn.</summary>
    public static ShapeSample Training(long index, long seed = 0) => Sample((int)(index % ClassCount), seed * 10_000_000 + index);

    /// <summary>The fixed held-out split: <paramref name="perClass"/> shapes of every class (class-major order), seeds disjoint from training.</summary>
    public static IReadOnlyList<ShapeSample> HeldOut(int perClass)
    {
        var list = new List<ShapeSample>(perClass * ClassCount);
        for (int c = 0; c < ClassCount; c++)
            for (int i = 0; i < perClass; i++)
                list.Add(Sample(c, HeldOutSeedBase + i));
        return list;
    }

    /// <summary>A second independent draw of the same size (seeds disjoint from training and held-out): the data-vs-data floor of every metric.</summary>
    public static IReadOnlyList<ShapeSample> FloorSet(int perClass)
    {
        var list = new List<ShapeSample>(perClass * ClassCount);
        for (int c = 0; c < ClassCount; c++)
            for (int i = 0; i < perClass; i++)
                list.Add(Sample(c, 2 * HeldOutSeedBase + i));
        return list;
    }

    /// <summary>Surface shell of an inside test: voxel centres inside with at least one 6-neighbour outside (or on the grid border).</summary>
    private static int[] Voxelise(Func<double, double, double, bool> inside)
    {
        const int r = Resolution;
        var solid = new bool[r, r, r];
        for (int x = 0; x < r; x++)
            for (int y = 0; y < r; y++)
                for (int z = 0; z < r; z++)
                    solid[x, y, z] = inside(ToUnit(x), ToUnit(y), ToUnit(z));
        bool S(int x, int y, int z) => x >= 0 && y >= 0 && z >= 0 && x < r && y < r && z < r && solid[x, y, z];
        var list = new List<int>();
        for (int x = 0; x < r; x++)
            for (int y = 0; y < r; y++)
                for (int z = 0; z < r; z++)
                    if (solid[x, y, z] && !(S(x - 1, y, z) && S(x + 1, y, z) && S(x, y - 1, z) && S(x, y + 1, z) && S(x, y, z - 1) && S(x, y, z + 1)))
                        list.AddRange(new[] { x, y, z });
        return list.ToArray();
    }

    /// <summary>Voxel index → unit-cube coordinate of its centre in [-1, 1].</summary>
    private static double ToUnit(int i) => (i + 0.5) / Resolution * 2 - 1;

    private static double U(Random rng, double lo, double hi) => lo + (hi - lo) * rng.NextDouble();

    /// <summary>A rigid placement: yaw about y, tilt about x, then a translation.</summary>
    private readonly record struct Pose(double Yaw, double Tilt, double Tx, double Ty, double Tz)
    {
        /// <summary>World point → shape frame.</summary>
        public (double X, double Y, double Z) ToLocal(double x, double y, double z)
        {
            x -= Tx; y -= Ty; z -= Tz;
            double cy = Math.Cos(Yaw), sy = Math.Sin(Yaw);
            double x1 = cy * x - sy * z, z1 = sy * x + cy * z;
            double ct = Math.Cos(Tilt), st = Math.Sin(Tilt);
            double y2 = ct * y - st * z1, z2 = st * y + ct * z1;
            return (x1, y2, z2);
        }
    }

    private static bool InBox(double x, double y, double z, double cx, double cy, double cz, double hx, double hy, double hz) =>
        Math.Abs(x - cx) <= hx && Math.Abs(y - cy) <= hy && Math.Abs(z - cz) <= hz;

    private static Func<double, double, double, bool> BuildInside(int cls, Random rng)
    {
        var pose = new Pose(U(rng, 0, Math.PI), 0, U(rng, -0.08, 0.08), U(rng, -0.08, 0.08), U(rng, -0.08, 0.08));
        switch (cls)
        {
            case 0: // sphere (slightly ellipsoidal)
            {
                double r = U(rng, 0.45, 0.8), sy = U(rng, 0.85, 1.15);
                return (x, y, z) => { var p = pose.ToLocal(x, y, z); return p.X * p.X + p.Y * p.Y / (sy * sy) + p.Z * p.Z <= r * r; };
            }
            case 1: // box
            {
                double hx = U(rng, 0.3, 0.75), hy = U(rng, 0.3, 0.75), hz = U(rng, 0.3, 0.75);
                return (x, y, z) => { var p = pose.ToLocal(x, y, z); return InBox(p.X, p.Y, p.Z, 0, 0, 0, hx, hy, hz); };
            }
            case 2: // torus, ring axis tilted from vertical
            {
                double big = U(rng, 0.5, 0.7), small = U(rng, 0.17, 0.27);
                pose = pose with { Tilt = U(rng, 0, 0.6) };
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    double q = Math.Sqrt(p.X * p.X + p.Z * p.Z) - big;
                    return q * q + p.Y * p.Y <= small * small;
                };
            }
            case 3: // upright cylinder
            {
                double r = U(rng, 0.3, 0.6), h = U(rng, 0.4, 0.8);
                pose = pose with { Tilt = U(rng, 0, 0.3) };
                return (x, y, z) => { var p = pose.ToLocal(x, y, z); return p.X * p.X + p.Z * p.Z <= r * r && Math.Abs(p.Y) <= h; };
            }
            case 4: // cone, apex up
            {
                double r = U(rng, 0.45, 0.8), h = U(rng, 0.5, 0.8);
                pose = pose with { Tilt = U(rng, 0, 0.25) };
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    if (p.Y < -h || p.Y > h) return false;
                    double rr = r * (h - p.Y) / (2 * h);
                    return p.X * p.X + p.Z * p.Z <= rr * rr;
                };
            }
            case 5: // capsule lying horizontally (axis along local x)
            {
                double r = U(rng, 0.22, 0.35), half = U(rng, 0.3, 0.55);
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    double ax = Math.Clamp(p.X, -half, half);
                    double dx = p.X - ax;
                    return dx * dx + p.Y * p.Y + p.Z * p.Z <= r * r;
                };
            }
            case 6: // arch: two pillars and a lintel
            {
                double w = U(rng, 0.45, 0.75), h = U(rng, 0.5, 0.8), t = U(rng, 0.14, 0.22), d = U(rng, 0.15, 0.35);
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    return InBox(p.X, p.Y, p.Z, -w + t, 0, 0, t, h, d) || InBox(p.X, p.Y, p.Z, w - t, 0, 0, t, h, d)
                        || InBox(p.X, p.Y, p.Z, 0, h - t, 0, w, t, d);
                };
            }
            case 7: // table: top slab and four legs
            {
                double w = U(rng, 0.5, 0.8), dz = U(rng, 0.4, 0.75), h = U(rng, 0.35, 0.65), top = U(rng, 0.09, 0.15), leg = U(rng, 0.09, 0.14);
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    if (InBox(p.X, p.Y, p.Z, 0, h - top, 0, w, top, dz)) return true;
                    if (p.Y < -h || p.Y > h) return false;
                    return Math.Abs(Math.Abs(p.X) - (w - leg)) <= leg && Math.Abs(Math.Abs(p.Z) - (dz - leg)) <= leg;
                };
            }
            default: // chair: seat, four legs, back
            {
                double w = U(rng, 0.35, 0.55), seatY = U(rng, -0.2, 0.0), seat = U(rng, 0.08, 0.13), leg = U(rng, 0.08, 0.12), back = U(rng, 0.25, 0.4);
                const double floor = -0.7;
                return (x, y, z) =>
                {
                    var p = pose.ToLocal(x, y, z);
                    if (InBox(p.X, p.Y, p.Z, 0, seatY, 0, w, seat, w)) return true;
                    if (InBox(p.X, p.Y, p.Z, 0, seatY + back, -w + seat, w, back, seat)) return true;
                    if (p.Y < floor || p.Y > seatY) return false;
                    return Math.Abs(Math.Abs(p.X) - (w - leg)) <= leg && Math.Abs(Math.Abs(p.Z) - (w - leg)) <= leg;
                };
            }
        }
    }
}
