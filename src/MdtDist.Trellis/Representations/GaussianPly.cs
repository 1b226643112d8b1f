using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// The standard 3D Gaussian splatting <c>.ply</c> layout (binary little-endian, one <c>vertex</c> element with the
/// float properties <c>x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3</c>), written exactly as TRELLIS's
/// <c>Gaussian.save_ply</c> does, and read back.
/// </summary>
/// <remarks>
/// Written values: position = <c>get_xyz · Tᵀ</c>; normals 0; the raw DC coefficients; opacity =
/// <c>logit(get_opacity)</c>; scale = <c>log(get_scaling)</c> (3D filter included); rotation = the quaternion of
/// <c>T · R(_rotation + [1, 0, 0, 0])</c> in utils3d's canonical form (unit length, largest component positive).
/// Everything is computed in float64 and rounded to float32 only when written, which reproduces TRELLIS's file
/// byte for byte for float64 Gaussians.
/// </remarks>
public static class GaussianPly
{
    /// <summary>The 17 property names of a degree-0 3DGS file, in file order.</summary>
    public static IReadOnlyList<string> PropertyNames { get; } = new[]
    {
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    };

    /// <summary>TRELLIS's default export transform (z-up to y-up: (x, y, z) → (x, −z, y)); a new copy each call.</summary>
    public static double[,] DefaultTransform => new double[,] { { 1, 0, 0 }, { 0, 0, -1 }, { 0, 1, 0 } };

    /// <summary>Writes <paramref name="gaussians"/> to <paramref name="path"/> with TRELLIS's default transform.</summary>
    public static void Save(string path, Gaussians gaussians) => Save(path, gaussians, DefaultTransform);

    /// <summary>
    /// Writes <paramref name="gaussians"/> to <paramref name="path"/> (through a temporary file in the same folder and
    /// a rename, so a reader never sees a partial file). <paramref name="transform"/> is a 3×3 matrix applied to
    /// positions and rotations, or null for none.
    /// </summary>
    public static void Save(string path, Gaussians gaussians, double[,]? transform)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var bytes = ToBytes(gaussians, transform);
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full) ?? throw new ArgumentException($"path '{path}' has no folder", nameof(path));
        if (!Directory.Exists(dir)) throw new ArgumentException($"folder '{dir}' of path '{path}' does not exist", nameof(path));
        MdtDist.Core.IO.AtomicFile.Write(full, fs => fs.Write(bytes));
    }

    /// <summary>The bytes of the <c>.ply</c> file <see cref="Save(string, Gaussians, double[,])"/> writes.</summary>
    public static byte[] ToBytes(Gaussians gaussians, double[,]? transform)
    {
        var attrs = ComputeAttributes(gaussians, transform).Attributes;
        return Encode(attrs, (int)gaussians.Count);
    }

    /// <summary>Reads a binary little-endian 3DGS <c>.ply</c> file (float properties only; the 17 standard ones required).</summary>
    /// <remarks>What a file can make this allocate is bounded by its size (the vertex count must match the data
    /// exactly), and the size is checked against <see cref="MdtDist.Core.IO.ReadLimits.MaxAllocationBytes"/> first.</remarks>
    /// <exception cref="ArgumentException"><paramref name="path"/> is null or empty.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The header is malformed or not a supported 3DGS layout, the data is
    /// truncated or followed by extra bytes, or the file is larger than the allocation bound; the message names the file.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static GaussianPlyData Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Gaussian .ply file '{path}' does not exist.", path);
        long length = new FileInfo(path).Length;
        MdtDist.Core.IO.ReadLimits.Check(length, () => $"Gaussian .ply file '{path}' is {length} bytes");
        if (length > Array.MaxLength) throw Bad(path, $"file is {length} bytes, more than one .NET array holds");
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses the bytes of a binary little-endian 3DGS <c>.ply</c> file (see <see cref="Read"/>).</summary>
    /// <exception cref="InvalidDataException">The header is malformed or not a supported 3DGS layout, or the data is
    /// truncated or followed by extra bytes; the message starts with <paramref name="sourceName"/>.</exception>
    public static GaussianPlyData Parse(ReadOnlySpan<byte> bytes, string sourceName = "<bytes>")
    {
        // Header: ASCII lines up to and including "end_header\n".
        int pos = 0;
        var lines = new List<string>();
        while (true)
        {
            int nl = bytes[pos..].IndexOf((byte)'\n');
            if (nl < 0) throw Bad(sourceName, lines.Count == 0 ? "not a PLY file (no header line)" : "header has no 'end_header' line (truncated?)");
            var line = Encoding.ASCII.GetString(bytes.Slice(pos, nl)).TrimEnd('\r');
            pos += nl + 1;
            lines.Add(line);
            if (line.Trim() == "end_header") break;
            if (pos > 1 << 20) throw Bad(sourceName, "header longer than 1 MiB");
        }
        if (lines[0] != "ply") throw Bad(sourceName, $"first line is '{Trunc(lines[0])}', expected 'ply'");
        string? format = null;
        long count = -1;
        var names = new List<string>();
        int elements = 0;
        for (int i = 1; i < lines.Count - 1; i++)
        {
            var tok = lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (tok.Length == 0) continue;
            switch (tok[0])
            {
                case "comment":
                case "obj_info":
                    break;
                case "format":
                    if (tok.Length != 3) throw Bad(sourceName, $"malformed format line '{Trunc(lines[i])}'");
                    format = tok[1] + " " + tok[2];
                    break;
                case "element":
                    elements++;
                    if (tok.Length != 3) throw Bad(sourceName, $"malformed element line '{Trunc(lines[i])}'");
                    if (elements > 1) throw Bad(sourceName, $"element '{tok[1]}': only a single 'vertex' element is supported");
                    if (tok[1] != "vertex") throw Bad(sourceName, $"element '{tok[1]}', expected 'vertex'");
                    if (!long.TryParse(tok[2], NumberStyles.None, CultureInfo.InvariantCulture, out count))
                        throw Bad(sourceName, $"vertex count '{tok[2]}' is not a non-negative integer");
                    break;
                case "property":
                    if (elements == 0) throw Bad(sourceName, $"property line '{Trunc(lines[i])}' before any element");
                    if (tok.Length == 5 && tok[1] == "list") throw Bad(sourceName, $"list property '{tok[4]}' is not supported in a Gaussian file");
                    if (tok.Length != 3) throw Bad(sourceName, $"malformed property line '{Trunc(lines[i])}'");
                    if (tok[1] is not ("float" or "float32"))
                        throw Bad(sourceName, $"property '{tok[2]}' has type '{tok[1]}'; only float (float32) properties are supported");
                    if (names.Contains(tok[2])) throw Bad(sourceName, $"property '{tok[2]}' is declared twice");
                    names.Add(tok[2]);
                    break;
                default:
                    throw Bad(sourceName, $"unexpected header line '{Trunc(lines[i])}'");
            }
        }
        if (format is null) throw Bad(sourceName, "header has no 'format' line");
        if (format != "binary_little_endian 1.0") throw Bad(sourceName, $"format '{format}' is not supported; expected 'binary_little_endian 1.0'");
        if (elements == 0) throw Bad(sourceName, "header declares no 'vertex' element");
        var missing = PropertyNames.Where(n => !names.Contains(n)).ToList();
        if (missing.Count > 0) throw Bad(sourceName, $"missing Gaussian properties: {string.Join(", ", missing)}");

        long stride = 4L * names.Count;
        long have = bytes.Length - pos;
        if (count > have / stride)
            throw Bad(sourceName, $"truncated: {count} vertices need {(count <= long.MaxValue / stride ? (count * stride).ToString(CultureInfo.InvariantCulture) : "more than 2^63")} bytes of data, found {have}");
        long need = count * stride;
        if (have > need) throw Bad(sourceName, $"{have - need} unexpected bytes after the {count} vertices");

        var columns = new float[names.Count][];
        for (int p = 0; p < names.Count; p++) columns[p] = new float[count];
        var data = bytes[pos..];
        for (long v = 0; v < count; v++)
            for (int p = 0; p < names.Count; p++)
                columns[p][v] = BinaryPrimitives.ReadSingleLittleEndian(data.Slice((int)(v * stride + 4L * p), 4));
        return new GaussianPlyData(names, columns);
    }

    /// <summary>The float64 values TRELLIS's save_ply writes, before the float32 cast, plus its intermediates.</summary>
    internal sealed record PlyAttributes(
        double[] Attributes,        // [G, 17] row-major
        double[] PreTransformXyz,   // [G, 3]
        double[] PreTransformRotation, // [G, 4]
        double[] RotationMatrix,    // [G, 3, 3]
        double[] RotationMatrixTransformed); // [G, 3, 3]

    internal static PlyAttributes ComputeAttributes(Gaussians gaussians, double[,]? transform)
    {
        ArgumentNullException.ThrowIfNull(gaussians);
        if (!gaussians.HasParameters) throw new ArgumentException("the Gaussian set has no parameters", nameof(gaussians));
        if (transform is not null && (transform.GetLength(0) != 3 || transform.GetLength(1) != 3))
            throw new ArgumentException($"transform must be 3x3; found {transform.GetLength(0)}x{transform.GetLength(1)}", nameof(transform));
        int g = checked((int)gaussians.Count);

        double[] xyz, fdc, opacity, scale, rot;
        using (var scope = torch.NewDisposeScope())
        using (no_grad())
        {
            xyz = ToDoubles(gaussians.GetXyz());
            fdc = ToDoubles(gaussians.FeaturesDc.transpose(1, 2).flatten(1));
            var s = gaussians.GetOpacity();
            opacity = ToDoubles(torch.log(s / (1 - s)));
            scale = ToDoubles(torch.log(gaussians.GetScaling()));
            rot = ToDoubles(gaussians.BiasedRotation());
        }
        var preXyz = (double[])xyz.Clone();
        var preRot = (double[])rot.Clone();
        var mats = new double[g * 9];
        var matsT = new double[g * 9];
        if (transform is not null)
        {
            var outXyz = new double[g * 3];
            for (int i = 0; i < g; i++)
                for (int r = 0; r < 3; r++)
                {
                    double acc = 0;
                    for (int k = 0; k < 3; k++) acc += xyz[i * 3 + k] * transform[r, k];
                    outXyz[i * 3 + r] = acc;
                }
            xyz = outXyz;
            var q = new double[4];
            var m = new double[9];
            var tm = new double[9];
            for (int i = 0; i < g; i++)
            {
                Array.Copy(rot, i * 4, q, 0, 4);
                QuaternionToMatrix(q, m);
                for (int r = 0; r < 3; r++)
                    for (int c = 0; c < 3; c++)
                    {
                        double acc = 0;
                        for (int k = 0; k < 3; k++) acc += transform[r, k] * m[k * 3 + c];
                        tm[r * 3 + c] = acc;
                    }
                Array.Copy(m, 0, mats, i * 9, 9);
                Array.Copy(tm, 0, matsT, i * 9, 9);
                MatrixToQuaternion(tm, q);
                Array.Copy(q, 0, rot, i * 4, 4);
            }
        }
        var attrs = new double[g * 17];
        for (int i = 0; i < g; i++)
        {
            var o = i * 17;
            attrs[o + 0] = xyz[i * 3]; attrs[o + 1] = xyz[i * 3 + 1]; attrs[o + 2] = xyz[i * 3 + 2];
            // normals (3..5) stay 0
            attrs[o + 6] = fdc[i * 3]; attrs[o + 7] = fdc[i * 3 + 1]; attrs[o + 8] = fdc[i * 3 + 2];
            attrs[o + 9] = opacity[i];
            attrs[o + 10] = scale[i * 3]; attrs[o + 11] = scale[i * 3 + 1]; attrs[o + 12] = scale[i * 3 + 2];
            for (int k = 0; k < 4; k++) attrs[o + 13 + k] = rot[i * 4 + k];
        }
        return new PlyAttributes(attrs, preXyz, preRot, mats, matsT);
    }

    /// <summary>The file bytes for <paramref name="count"/> rows of 17 float64 attributes (cast to float32 here).</summary>
    internal static byte[] Encode(double[] attributes, int count)
    {
        var header = new StringBuilder();
        header.Append("ply\n").Append("format binary_little_endian 1.0\n")
            .Append("element vertex ").Append(count.ToString(CultureInfo.InvariantCulture)).Append('\n');
        foreach (var n in PropertyNames) header.Append("property float ").Append(n).Append('\n');
        header.Append("end_header\n");
        var h = Encoding.ASCII.GetBytes(header.ToString());
        var bytes = new byte[h.Length + (long)count * 17 * 4];
        h.CopyTo(bytes, 0);
        var span = bytes.AsSpan(h.Length);
        for (int i = 0; i < count * 17; i++)
            BinaryPrimitives.WriteSingleLittleEndian(span.Slice(i * 4, 4), (float)attributes[i]);
        return bytes;
    }

    /// <summary>utils3d.numpy.quaternion_to_matrix for one (w, x, y, z), with numpy's operation order.</summary>
    internal static void QuaternionToMatrix(ReadOnlySpan<double> quat, Span<double> m)
    {
        double n = Math.Sqrt(((quat[0] * quat[0] + quat[1] * quat[1]) + quat[2] * quat[2]) + quat[3] * quat[3]);
        n = Math.Max(n, 1e-12);
        double w = quat[0] / n, x = quat[1] / n, y = quat[2] / n, z = quat[3] / n;
        Span<double> v = stackalloc double[] { x, y, z };
        double s = (x * x + y * y) + z * z;
        // B = [[0, -z, y], [z, 0, -x], [-y, x, 0]]
        Span<double> b = stackalloc double[] { 0, -z, y, z, 0, -x, -y, x, 0 };
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++)
            {
                double a = r == c ? v[r] * v[c] - s : v[r] * v[c];
                double wb = w * b[r * 3 + c];
                m[r * 3 + c] = (r == c ? 1.0 : 0.0) + 2 * (a + wb);
            }
    }

    /// <summary>utils3d.numpy.matrix_to_quaternion for one row-major 3×3 matrix, with numpy's operation order.</summary>
    internal static void MatrixToQuaternion(ReadOnlySpan<double> m, Span<double> q)
    {
        double m00 = m[0], m01 = m[1], m02 = m[2], m10 = m[3], m11 = m[4], m12 = m[5], m20 = m[6], m21 = m[7], m22 = m[8];
        // diag @ M^T with M rows [1,1,1], [1,-1,-1], [-1,1,-1], [-1,-1,1]; then 0.5 * sqrt(clip(1 + ., 0))
        Span<double> wxyz = stackalloc double[4];
        ReadOnlySpan<double> signs = stackalloc double[] { 1, 1, 1, 1, -1, -1, -1, 1, -1, -1, -1, 1 };
        for (int r = 0; r < 4; r++)
        {
            double acc = 0;
            acc += m00 * signs[r * 3];
            acc += m11 * signs[r * 3 + 1];
            acc += m22 * signs[r * 3 + 2];
            wxyz[r] = 0.5 * Math.Sqrt(Math.Max(1 + acc, 0.0));
        }
        // np.argmax: the first maximum, or the first NaN if there is one
        int k = 0;
        for (int r = 1; r < 4 && !double.IsNaN(wxyz[k]); r++) if (double.IsNaN(wxyz[r]) || wxyz[r] > wxyz[k]) k = r;
        double xw = Sign(m21 - m12), yw = Sign(m02 - m20), zw = Sign(m10 - m01);
        double yz = Sign(m21 + m12), xz = Sign(m02 + m20), xy = Sign(m01 + m10);
        Span<double> sign = k switch
        {
            0 => stackalloc double[] { 1, xw, yw, zw },
            1 => stackalloc double[] { xw, 1, xy, xz },
            2 => stackalloc double[] { yw, xy, 1, yz },
            _ => stackalloc double[] { zw, xz, yz, 1 },
        };
        for (int r = 0; r < 4; r++) q[r] = sign[r] * wxyz[r];
        double n = Math.Sqrt(((q[0] * q[0] + q[1] * q[1]) + q[2] * q[2]) + q[3] * q[3]);
        n = Math.Max(n, 1e-12);
        for (int r = 0; r < 4; r++) q[r] /= n;
    }

    /// <summary>np.sign: -1, 0 or 1, NaN for NaN.</summary>
    private static double Sign(double v) => double.IsNaN(v) ? double.NaN : v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0;

    private static double[] ToDoubles(Tensor t) => t.detach().to(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();

    private static InvalidDataException Bad(string source, string message) => new($"{source}: not a supported 3DGS .ply file: {message}");

    private static string Trunc(string s) => s.Length <= 80 ? s : s[..80] + "...";
}

/// <summary>The columns of a 3DGS <c>.ply</c> file as read by <see cref="GaussianPly.Read"/>.</summary>
public sealed class GaussianPlyData
{
    private readonly float[][] _columns;
    private readonly Dictionary<string, int> _index;

    internal GaussianPlyData(IReadOnlyList<string> names, float[][] columns)
    {
        Properties = names.ToArray();
        _columns = columns;
        _index = Properties.Select((n, i) => (n, i)).ToDictionary(p => p.n, p => p.i, StringComparer.Ordinal);
    }

    /// <summary>The property names in file order.</summary>
    public IReadOnlyList<string> Properties { get; }

    /// <summary>Number of Gaussians (vertices).</summary>
    public int Count => _columns.Length == 0 ? 0 : _columns[0].Length;

    /// <summary>The values of property <paramref name="name"/> (one per Gaussian).</summary>
    /// <exception cref="ArgumentException">The file has no such property.</exception>
    public IReadOnlyList<float> this[string name] =>
        _index.TryGetValue(name, out var i) ? _columns[i]
        : throw new ArgumentException($"no property '{name}'; the file has: {string.Join(", ", Properties)}", nameof(name));

    /// <summary>The 17 standard columns (<see cref="GaussianPly.PropertyNames"/> order) as a float32 tensor [G, 17].</summary>
    public Tensor ToTensor()
    {
        int g = Count;
        var flat = new float[(long)g * GaussianPly.PropertyNames.Count];
        for (int p = 0; p < GaussianPly.PropertyNames.Count; p++)
        {
            var col = _columns[_index[GaussianPly.PropertyNames[p]]];
            for (int v = 0; v < g; v++) flat[(long)v * GaussianPly.PropertyNames.Count + p] = col[v];
        }
        return torch.tensor(flat, new long[] { g, GaussianPly.PropertyNames.Count }, dtype: ScalarType.Float32);
    }
}
