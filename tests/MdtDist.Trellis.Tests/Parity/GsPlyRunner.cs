using System.Text.Json;
using MdtDist.Trellis.Representations;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Family <c>gs_ply</c>: TRELLIS's Gaussian.save_ply (default transform) on a float64 Gaussian set. Compares the
/// float64 attributes and intermediates at 1e-9, the float32 vertex table, and the written file byte for byte.
/// </summary>
public sealed class GsPlyRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "gs_ply";

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        using var gaussians = GaussiansFromArgs(c.Settings.GetProperty("gaussian_args"));
        gaussians.SetParameters(c["in._xyz"], c["in._features_dc"], c["in._scaling"], c["in._rotation"], c["in._opacity"]);
        var transform = ReadMatrix(c.Settings.GetProperty("save_ply_transform"));
        int g = (int)gaussians.Count;

        var a = GaussianPly.ComputeAttributes(gaussians, transform);
        SparseGolden.Check(c, "out.pre_transform.xyz", Doubles(a.PreTransformXyz, g, 3));
        SparseGolden.Check(c, "out.pre_transform.rotation", Doubles(a.PreTransformRotation, g, 4));
        SparseGolden.Check(c, "out.rotation_matrix", Doubles(a.RotationMatrix, g, 3, 3));
        SparseGolden.Check(c, "out.rotation_matrix_transformed", Doubles(a.RotationMatrixTransformed, g, 3, 3));
        SparseGolden.Check(c, "out.attributes", Doubles(a.Attributes, g, 17));

        var dir = Directory.CreateTempSubdirectory("mdtdist-gsply-");
        try
        {
            var path = Path.Combine(dir.FullName, "gaussians.ply");
            GaussianPly.Save(path, gaussians, transform);
            var bytes = File.ReadAllBytes(path);
            var expected = c["out.ply_bytes"].data<byte>().ToArray();
            Assert.Equal(expected.Length, bytes.Length);
            int firstDiff = -1;
            for (int i = 0; i < bytes.Length; i++)
                if (bytes[i] != expected[i]) { firstDiff = i; break; }
            Assert.True(firstDiff < 0, $"{c.Name}: ply bytes differ from the reference first at byte {firstDiff}");
            GoldenAssert.Output(c, "out.ply_bytes", torch.tensor(bytes, dtype: ScalarType.Byte));

            // the reader gives back exactly the float32 values the reference wrote
            var read = GaussianPly.Read(path);
            Assert.Equal(GaussianPly.PropertyNames, read.Properties);
            var vertex = read.ToTensor().to(ScalarType.Float64);
            SparseGolden.Check(c, "out.vertex", vertex);
            Assert.True(c["out.vertex"].eq(vertex).all().item<bool>(), $"{c.Name}: read-back vertex table is not bit-identical to out.vertex");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    internal static Gaussians GaussiansFromArgs(JsonElement args) => new(
        args.GetProperty("aabb").EnumerateArray().Select(e => e.GetDouble()).ToArray(),
        args.GetProperty("sh_degree").GetInt32(),
        args.GetProperty("mininum_kernel_size").GetDouble(),
        args.GetProperty("scaling_bias").GetDouble(),
        args.GetProperty("opacity_bias").GetDouble(),
        args.GetProperty("scaling_activation").GetString() switch
        {
            "softplus" => GaussianScalingActivation.Softplus,
            "exp" => GaussianScalingActivation.Exp,
            var s => throw new InvalidDataException($"unknown scaling_activation '{s}'"),
        });

    private static double[,] ReadMatrix(JsonElement m)
    {
        var rows = m.EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetDouble()).ToArray()).ToArray();
        var t = new double[rows.Length, rows[0].Length];
        for (int i = 0; i < rows.Length; i++)
            for (int j = 0; j < rows[i].Length; j++) t[i, j] = rows[i][j];
        return t;
    }

    private static Tensor Doubles(double[] values, params long[] shape) => torch.tensor(values, shape, dtype: ScalarType.Float64);
}
