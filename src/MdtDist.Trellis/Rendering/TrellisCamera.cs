namespace MdtDist.Trellis.Rendering;

/// <summary>
/// A pinhole camera in TRELLIS's conventions (utils3d): OpenCV extrinsics (world → camera, x right, y down, z forward)
/// and normalised intrinsics (focal lengths and principal point in units of the image size, so the same camera renders
/// any resolution).
/// </summary>
/// <remarks>
/// <para>A world point <c>p</c> maps to camera coordinates <c>q = R·p + t</c> (<see cref="Extrinsics"/> holds
/// <c>[R | t]</c>), then to normalised image coordinates <c>u = fx·qx/qz + cx</c>, <c>v = fy·qy/qz + cy</c>
/// (u to the right, v down, both in [0, 1] across the image). On a W×H image pixel <c>(col, row)</c> has its centre at
/// <c>u = (col + 0.5)/W</c>, <c>v = (row + 0.5)/H</c>; that is the pixel grid of TRELLIS's Gaussian rasteriser
/// (<c>ndc2Pix</c>) and of nvdiffrast.</para>
/// <para>TRELLIS's scenes are z up with the object inside <c>[-0.5, 0.5]³</c>; <see cref="Orbit"/> places the camera on
/// a sphere around the origin exactly as <c>yaw_pitch_r_fov_to_extrinsics_intrinsics</c> does.</para>
/// </remarks>
public sealed record TrellisCamera
{
    private readonly double[] _extrinsics;

    /// <summary>Creates a camera from a row-major 3×4 or 4×4 world-to-camera matrix and normalised intrinsics.</summary>
    /// <param name="extrinsics">12 or 16 numbers, row-major; the rotation part must be orthonormal.</param>
    /// <param name="fx">Focal length in units of the image width (<c>0.5 / tan(fov_x / 2)</c>).</param>
    /// <param name="fy">Focal length in units of the image height.</param>
    /// <param name="cx">Principal point, in units of the width (0.5 = centre).</param>
    /// <param name="cy">Principal point, in units of the height (0.5 = centre).</param>
    /// <exception cref="ArgumentException">A value is not finite or the rotation is not orthonormal.</exception>
    public TrellisCamera(IReadOnlyList<double> extrinsics, double fx, double fy, double cx = 0.5, double cy = 0.5)
    {
        ArgumentNullException.ThrowIfNull(extrinsics);
        if (extrinsics.Count != 12 && extrinsics.Count != 16)
            throw new ArgumentException($"extrinsics must hold 12 (3×4) or 16 (4×4) row-major values; found {extrinsics.Count}", nameof(extrinsics));
        if (extrinsics.Any(v => !double.IsFinite(v)))
            throw new ArgumentException($"extrinsics must be finite; found [{string.Join(", ", extrinsics)}]", nameof(extrinsics));
        _extrinsics = extrinsics.Take(12).ToArray();
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
            {
                double dot = 0;
                for (int k = 0; k < 3; k++) dot += _extrinsics[i * 4 + k] * _extrinsics[j * 4 + k];
                if (Math.Abs(dot - (i == j ? 1 : 0)) > 1e-6)
                    throw new ArgumentException($"the rotation part of extrinsics must be orthonormal; rows {i} and {j} have dot product {dot}", nameof(extrinsics));
            }
        foreach (var (v, n) in new[] { (fx, nameof(fx)), (fy, nameof(fy)) })
            if (!(v > 0) || !double.IsFinite(v)) throw new ArgumentException($"{n} must be a finite value > 0; found {v}", n);
        foreach (var (v, n) in new[] { (cx, nameof(cx)), (cy, nameof(cy)) })
            if (!double.IsFinite(v)) throw new ArgumentException($"{n} must be finite; found {v}", n);
        Fx = fx; Fy = fy; Cx = cx; Cy = cy;
    }

    /// <summary>World-to-camera matrix <c>[R | t]</c>, 12 numbers, row-major (OpenCV axes: x right, y down, z forward).</summary>
    public IReadOnlyList<double> Extrinsics => _extrinsics;

    /// <summary>Focal length in units of the image width.</summary>
    public double Fx { get; }

    /// <summary>Focal length in units of the image height.</summary>
    public double Fy { get; }

    /// <summary>Principal point in units of the image width.</summary>
    public double Cx { get; }

    /// <summary>Principal point in units of the image height.</summary>
    public double Cy { get; }

    /// <summary>Horizontal field of view in radians: <c>2·atan(0.5 / fx)</c>.</summary>
    public double FovX => 2 * Math.Atan(0.5 / Fx);

    /// <summary>Camera centre in world coordinates: <c>−Rᵀ·t</c>.</summary>
    public (double X, double Y, double Z) Position
    {
        get
        {
            var e = _extrinsics;
            return (-(e[0] * e[3] + e[4] * e[7] + e[8] * e[11]),
                    -(e[1] * e[3] + e[5] * e[7] + e[9] * e[11]),
                    -(e[2] * e[3] + e[6] * e[7] + e[10] * e[11]));
        }
    }

    /// <summary>TRELLIS's preview distance from the origin.</summary>
    public const double DefaultRadius = 2.0;

    /// <summary>TRELLIS's preview field of view in degrees.</summary>
    public const double DefaultFovDegrees = 40.0;

    /// <summary>
    /// The camera TRELLIS's <c>yaw_pitch_r_fov_to_extrinsics_intrinsics</c> builds: eye at
    /// <c>r·(sin(yaw)·cos(pitch), cos(yaw)·cos(pitch), sin(pitch))</c>, looking at the origin with +z up
    /// (<c>extrinsics_look_at</c>), square field of view <paramref name="fovDegrees"/> (<c>intrinsics_from_fov_xy</c>).
    /// </summary>
    /// <param name="yaw">Rotation about +z in radians (0: the eye on +y).</param>
    /// <param name="pitch">Elevation in radians, in (−π/2, π/2) (the look-at frame is undefined at the poles).</param>
    /// <param name="radius">Distance from the origin (TRELLIS: 2).</param>
    /// <param name="fovDegrees">Field of view in degrees (TRELLIS: 40).</param>
    public static TrellisCamera Orbit(double yaw, double pitch, double radius = DefaultRadius, double fovDegrees = DefaultFovDegrees)
    {
        if (!double.IsFinite(yaw)) throw new ArgumentException($"yaw must be finite; found {yaw}", nameof(yaw));
        if (!(Math.Abs(pitch) < Math.PI / 2 - 1e-6)) throw new ArgumentException($"pitch must lie strictly inside (-π/2, π/2); found {pitch}", nameof(pitch));
        if (!(radius > 0) || !double.IsFinite(radius)) throw new ArgumentException($"radius must be a finite value > 0; found {radius}", nameof(radius));
        if (!(fovDegrees > 0 && fovDegrees < 180)) throw new ArgumentException($"fovDegrees must lie in (0, 180); found {fovDegrees}", nameof(fovDegrees));
        double[] eye = { Math.Sin(yaw) * Math.Cos(pitch) * radius, Math.Cos(yaw) * Math.Cos(pitch) * radius, Math.Sin(pitch) * radius };
        // utils3d extrinsics_look_at(eye, 0, up = +z): z = look_at − eye, x = (−up) × z, y = z × x, rows of R = x, y, z.
        double[] z = { -eye[0], -eye[1], -eye[2] };
        double[] x = Cross(new[] { 0.0, 0.0, -1.0 }, z);
        double[] y = Cross(z, x);
        Normalize(x); Normalize(y); Normalize(z);
        var e = new double[12];
        for (int k = 0; k < 3; k++) { e[k] = x[k]; e[4 + k] = y[k]; e[8 + k] = z[k]; }
        for (int r = 0; r < 3; r++) e[r * 4 + 3] = -(e[r * 4] * eye[0] + e[r * 4 + 1] * eye[1] + e[r * 4 + 2] * eye[2]);
        double f = 0.5 / Math.Tan(fovDegrees * Math.PI / 180 / 2);
        return new TrellisCamera(e, f, f);
    }

    /// <summary>The names <see cref="Named"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { "front", "right", "back", "left", "top", "bottom", "iso" };

    /// <summary>
    /// A named orbit camera at TRELLIS's preview distance and field of view (radius 2, 40°):
    /// <c>front</c> (yaw 0: the eye on +y), <c>right</c> (yaw π/2), <c>back</c> (π), <c>left</c> (3π/2) at pitch 0;
    /// <c>top</c> / <c>bottom</c> at pitch ±89.9° (the look-at frame with +z up is undefined at exactly ±90°);
    /// <c>iso</c> at yaw −16°, pitch 20° (the angles of TRELLIS's <c>render_snapshot</c>).
    /// </summary>
    /// <exception cref="ArgumentException">The name is not one of <see cref="Names"/>.</exception>
    public static TrellisCamera Named(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        const double deg = Math.PI / 180;
        return name.ToLowerInvariant() switch
        {
            "front" => Orbit(0, 0),
            "right" => Orbit(Math.PI / 2, 0),
            "back" => Orbit(Math.PI, 0),
            "left" => Orbit(3 * Math.PI / 2, 0),
            "top" => Orbit(0, 89.9 * deg),
            "bottom" => Orbit(0, -89.9 * deg),
            "iso" => Orbit(-16 * deg, 20 * deg),
            _ => throw new ArgumentException($"unknown camera name '{name}'; expected one of {string.Join(", ", Names)}", nameof(name)),
        };
    }

    /// <summary>
    /// The cameras of TRELLIS's <c>render_video</c>: <paramref name="frames"/> yaws <c>linspace(0, 2·3.1415, n)</c> with pitch
    /// <c>0.25 + 0.5·sin(yaw)</c> (TRELLIS writes 3.1415 for π, so the first and last frames nearly coincide), radius 2, 40°.
    /// </summary>
    public static IReadOnlyList<TrellisCamera> Turntable(int frames, double radius = DefaultRadius, double fovDegrees = DefaultFovDegrees)
    {
        if (frames < 1) throw new ArgumentException($"frames must be >= 1; found {frames}", nameof(frames));
        var list = new TrellisCamera[frames];
        for (int i = 0; i < frames; i++)
        {
            double a = frames == 1 ? 0 : 2 * 3.1415 * i / (frames - 1);
            list[i] = Orbit(a, 0.25 + 0.5 * Math.Sin(a), radius, fovDegrees);
        }
        return list;
    }

    /// <summary>World point → camera coordinates <c>R·p + t</c>.</summary>
    public (double X, double Y, double Z) ToCamera(double x, double y, double z)
    {
        var e = _extrinsics;
        return (e[0] * x + e[1] * y + e[2] * z + e[3], e[4] * x + e[5] * y + e[6] * z + e[7], e[8] * x + e[9] * y + e[10] * z + e[11]);
    }

    /// <summary>
    /// World point → pixel coordinates on a <paramref name="width"/>×<paramref name="height"/> image (pixel centres at
    /// integers: <c>col = u·W − 0.5</c>, <c>row = v·H − 0.5</c>) and camera depth z.
    /// </summary>
    public (double Col, double Row, double Depth) Project(double x, double y, double z, int width, int height)
    {
        var (qx, qy, qz) = ToCamera(x, y, z);
        return ((Fx * qx / qz + Cx) * width - 0.5, (Fy * qy / qz + Cy) * height - 0.5, qz);
    }

    /// <inheritdoc/>
    public bool Equals(TrellisCamera? other) =>
        other is not null && _extrinsics.AsSpan().SequenceEqual(other._extrinsics) && Fx == other.Fx && Fy == other.Fy
        && Cx == other.Cx && Cy == other.Cy;

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var v in _extrinsics) h.Add(v);
        h.Add(Fx); h.Add(Fy); h.Add(Cx); h.Add(Cy);
        return h.ToHashCode();
    }

    private static double[] Cross(double[] a, double[] b) =>
        new[] { a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0] };

    private static void Normalize(double[] v)
    {
        double n = Math.Sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        for (int k = 0; k < 3; k++) v[k] /= n;
    }
}
