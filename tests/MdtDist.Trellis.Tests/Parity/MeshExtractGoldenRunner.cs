using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Family <c>mesh_extract</c>: TRELLIS's <c>SparseFeatures2Mesh</c> + FlexiCubes per batch item, inference and training,
/// in float64. The reference fixes every order (surface cubes by id, dual vertices grouped by vertices per cube, quads
/// by orientation then edge), so vertices and faces are compared row by row: integers exactly, floats at 1e-9 relative.
/// The library's embedded tables must equal the case's <c>const.*</c> tensors.
/// </summary>
public sealed class MeshExtractGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "mesh_extract";

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        CheckTables(c);
        var ex = c.Settings.GetProperty("mesh_extractor");
        int res = ex.GetProperty("res").GetInt32();
        bool useColor = ex.GetProperty("use_color").GetBoolean();
        double weightScale = ex.TryGetProperty("flexicubes_call", out var call) && call.TryGetProperty("weight_scale", out var ws)
            ? ws.GetDouble() : FlexiCubes.DefaultWeightScale;
        var coords = c["in.coords"];
        var feats = c["in.feats"];
        var batch = coords[.., 0];
        long items = batch.numel() == 0 ? 0 : batch.max().item<long>() + 1;
        if (c.Settings.TryGetProperty("items", out var it) && it.GetInt64() != items)
            throw new Xunit.Sdk.XunitException($"{c.Name}: in.coords has {items} items, settings.items says {it.GetInt64()}");
        var outputs = c.Role("outputs").ToHashSet();
        var compared = new HashSet<string>();
        for (long b = 0; b < items; b++)
        {
            var rows = batch.eq(b).nonzero().squeeze(1);
            using var fc = FlexiCubesInputs.FromFeatures(coords.index_select(0, rows)[.., 1..], feats.index_select(0, rows), res, useColor);
            foreach (bool training in new[] { false, true })
            {
                using var r = FlexiCubes.Extract(fc, training, weightScale);
                var p = $"out.{b}.";
                var m = p + (training ? "train." : "eval.");
                Compare(c, compared, p + "surf_cubes", r.SurfaceCubes);
                Compare(c, compared, p + "case_ids", r.CaseIds);
                Compare(c, compared, m + "vertices", r.Vertices);
                Compare(c, compared, m + "faces", r.Faces);
                if (r.VertexAttributes is not null) Compare(c, compared, m + "vertex_attrs", r.VertexAttributes);
                else if (c.Has(m + "vertex_attrs")) throw new Xunit.Sdk.XunitException($"{c.Name}: the reference has {m}vertex_attrs, the port none");
                // face normals of tiny faces are ill-conditioned (the manifest's note); in float64 they still agree to ~1e-12
                Compare(c, compared, m + "face_normal", r.FaceNormals);
                if (training)
                {
                    Compare(c, compared, m + "L_dev", r.DevLoss!);
                    Compare(c, compared, m + "con_loss", r.ConsistencyLoss!);
                    Compare(c, compared, m + "reg_loss", r.RegLoss!);
                    Compare(c, compared, m + "tsdf_v", r.TsdfVertices!);
                    Compare(c, compared, m + "tsdf_s", r.TsdfValues!);
                }
            }
        }
        var missed = outputs.Except(compared).ToList();
        if (missed.Count > 0) throw new Xunit.Sdk.XunitException($"{c.Name}: outputs not compared: {string.Join(", ", missed)}");
    }

    private static void Compare(GoldenCase c, HashSet<string> compared, string name, Tensor actual)
    {
        if (!c.Has(name)) return;
        GoldenAssert.Output(c, name, actual);
        compared.Add(name);
    }

    private static void CheckTables(GoldenCase c)
    {
        foreach (var (name, table) in FlexiCubesTablesView.All)
        {
            var key = "const." + name;
            if (!c.Has(key)) continue;
            using var expected = c[key].reshape(-1);
            using var actual = torch.tensor(table, dtype: ScalarType.Int64);
            if (!expected.shape.SequenceEqual(actual.shape) || !expected.eq(actual).all().item<bool>())
                throw new Xunit.Sdk.XunitException($"{c.Name}: the library's embedded {name} differs from {key}");
        }
        // The remaining reference tables (cube_corners_idx, quad_split_*, tet_table) are expressed by the port's code
        // rather than embedded as data; the outputs compared above check them.
        foreach (var name in c.NamesStartingWith("const.")) _ = c[name];
    }
}

/// <summary>The library's embedded FlexiCubes tables as flat arrays, by their reference names.</summary>
internal static class FlexiCubesTablesView
{
    public static IEnumerable<(string Name, long[] Values)> All => new[]
    {
        ("dmc_table", ToLong(FlexiCubesTables.DmcTable)),
        ("num_vd_table", ToLong(FlexiCubesTables.NumVdTable)),
        ("check_table", ToLong(FlexiCubesTables.CheckTable)),
        ("cube_edges", ToLong(FlexiCubesTables.CubeEdges)),
    };

    private static long[] ToLong(ReadOnlySpan<short> s)
    {
        var a = new long[s.Length];
        for (int i = 0; i < a.Length; i++) a[i] = s[i];
        return a;
    }
}
