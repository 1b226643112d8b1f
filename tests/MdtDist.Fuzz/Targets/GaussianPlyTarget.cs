using System.Text;
using MdtDist.Trellis.Representations;

namespace MdtDist.Fuzz.Targets;

/// <summary><see cref="GaussianPly.Read"/> on one <c>.ply</c> file, then <see cref="GaussianPlyData.ToTensor"/>.</summary>
public sealed class GaussianPlyTarget : FuzzTarget
{
    /// <inheritdoc />
    public override string Name => "gaussian_ply";

    /// <inheritdoc />
    public override string EntryPoint => "GaussianPly.Read(path)";

    /// <inheritdoc />
    protected override IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds()
    {
        static byte[] Ply(IReadOnlyList<string> props, int count, int seed)
        {
            var rng = new Random(seed);
            var sb = new StringBuilder("ply\nformat binary_little_endian 1.0\n");
            sb.Append("element vertex ").Append(count).Append('\n');
            foreach (var p in props) sb.Append("property float ").Append(p).Append('\n');
            sb.Append("end_header\n");
            var head = Encoding.ASCII.GetBytes(sb.ToString());
            var data = new byte[4 * props.Count * count];
            for (int i = 0; i < props.Count * count; i++) BitConverter.TryWriteBytes(data.AsSpan(4 * i), (float)(rng.NextDouble() * 2 - 1));
            return head.Concat(data).ToArray();
        }
        var std = GaussianPly.PropertyNames;
        var extra = std.Concat(new[] { "f_rest_0", "f_rest_1" }).ToArray();
        return new[]
        {
            new Dictionary<string, byte[]> { ["sample.ply"] = Ply(std, 5, 1) },
            new Dictionary<string, byte[]> { ["sample.ply"] = Ply(extra, 3, 2) },
            new Dictionary<string, byte[]> { ["sample.ply"] = Ply(std, 0, 3) },
        };
    }

    /// <inheritdoc />
    public override void Read(string folder, FuzzCase c)
    {
        var data = GaussianPly.Read(Path.Combine(folder, "sample.ply"));
        using var t = data.ToTensor();
    }
}
