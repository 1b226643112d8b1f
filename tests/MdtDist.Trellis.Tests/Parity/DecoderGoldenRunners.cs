using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Family <c>slat_dec_gs</c>: <see cref="SLatGaussianDecoder"/> forward in float64, the network output and every
/// Gaussian tensor and getter of both samples; also the Hammersley buffer as built (before loading the file's copy).
/// </summary>
public sealed class SLatGaussianDecoderGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "slat_dec_gs";

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var model = TrellisCheckpoint.Build<SLatGaussianDecoder>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
        // the buffer built from the Hammersley sequence equals the reference's (before the file's copy is loaded)
        SparseGolden.Check(c, "model.offset_perturbation", model.OffsetPerturbation);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        model.eval();

        var x = new SparseTensor(c["in.feats"], c["in.coords"], model.Resolution);
        var h = model.ForwardFeatures(x);
        SparseGolden.Check(c, "out.feats", h.Feats);
        var reps = model.ToRepresentation(h);
        try
        {
            var constants = c.Settings.GetProperty("constants_f64");
            for (int b = 0; b < reps.Count; b++)
            {
                var gs = reps[b];
                CheckScalar(c, "scale_bias", constants.GetProperty("scale_bias").GetDouble(), gs.ScaleBias);
                CheckScalar(c, "opacity_bias_logit", constants.GetProperty("opacity_bias_logit").GetDouble(), gs.OpacityLogitBias);
                var p = $"out.{b}.";
                SparseGolden.Check(c, p + "_xyz", gs.Xyz);
                SparseGolden.Check(c, p + "_features_dc", gs.FeaturesDc);
                SparseGolden.Check(c, p + "_scaling", gs.Scaling);
                SparseGolden.Check(c, p + "_rotation", gs.Rotation);
                SparseGolden.Check(c, p + "_opacity", gs.Opacity);
                SparseGolden.Check(c, p + "get_xyz", gs.GetXyz());
                SparseGolden.Check(c, p + "get_features", gs.GetFeatures());
                SparseGolden.Check(c, p + "get_scaling", gs.GetScaling());
                SparseGolden.Check(c, p + "get_rotation", gs.GetRotation());
                SparseGolden.Check(c, p + "get_opacity", gs.GetOpacity());
            }
            if (c.Has($"out.{reps.Count}._xyz"))
                throw new Xunit.Sdk.XunitException($"{c.Name}: the reference has more samples than the {reps.Count} decoded");

            // the full forward gives the same sets
            var again = model.forward(x);
            try
            {
                for (int b = 0; b < reps.Count; b++)
                    if (!again[b].Xyz.eq(reps[b].Xyz).all().item<bool>())
                        throw new Xunit.Sdk.XunitException($"{c.Name}: Forward differs from ToRepresentation(ForwardFeatures) for sample {b}");
            }
            finally
            {
                foreach (var gs in again) gs.Dispose();
            }
        }
        finally
        {
            foreach (var gs in reps) gs.Dispose();
        }
    }

    private static void CheckScalar(GoldenCase c, string name, double expected, double actual)
    {
        if (Math.Abs(expected - actual) > 1e-14 * Math.Max(1, Math.Abs(expected)))
            throw new Xunit.Sdk.XunitException($"{c.Name}: {name} = {actual:R}, expected {expected:R}");
    }
}

/// <summary>
/// Family <c>slat_dec_mesh</c>: <see cref="SLatMeshDecoder"/> up to FlexiCubes (case <c>slat_dec_mesh</c>, with the
/// reference's num_groups patch) and a lone <c>SparseSubdivideBlock3d</c> (case <c>slat_dec_mesh_subdivide</c>), float64.
/// </summary>
public sealed class SLatMeshDecoderGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "slat_dec_mesh";

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        if (c.ConfigName == "SparseSubdivideBlock3d") RunBlock(c);
        else RunDecoder(c);
    }

    private static void RunBlock(GoldenCase c)
    {
        var args = c.Config.GetProperty("args");
        var block = new SparseSubdivideBlock3d(args.GetProperty("channels").GetInt64(), args.GetProperty("resolution").GetInt32(),
            args.TryGetProperty("out_channels", out var oc) ? oc.GetInt64() : null, dtype: ScalarType.Float64);
        SparseGolden.LoadExact(block, c.WithPrefix("model."), c.Name);
        var x = new SparseTensor(c["in.feats"], c["in.coords"], block.Resolution);
        var y = block.Forward(x);
        GoldenAssert.Output(c, "out.coords", y.Coords);
        SparseGolden.Check(c, "out.feats", y.Feats);
    }

    private static void RunDecoder(GoldenCase c)
    {
        int groups = 32;
        if (c.Root.TryGetProperty("reference_patches", out var patches) && patches.ValueKind == System.Text.Json.JsonValueKind.Object)
            foreach (var p in patches.EnumerateObject())
                groups = p.Name == "SparseSubdivideBlock3d.num_groups" ? p.Value.GetInt32()
                    : throw new Xunit.Sdk.XunitException($"{c.Name}: unknown reference patch '{p.Name}'");
        var model = new SLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(TrellisModelConfig.FromJson(c.Config).Args) with { SubdivideNumGroups = groups }, ScalarType.Float64);
        SparseGolden.LoadExact(model, c.WithPrefix("model."), c.Name);
        model.eval();
        var extractor = c.Settings.GetProperty("mesh_extractor");
        if (extractor.GetProperty("res").GetInt32() != model.MeshResolution || extractor.GetProperty("channels").GetInt32() != model.OutChannels
            || (extractor.TryGetProperty("use_color", out var uc) && uc.GetBoolean() != model.UseColor))
            throw new Xunit.Sdk.XunitException($"{c.Name}: mesh resolution {model.MeshResolution} / channels {model.OutChannels} / use_color {model.UseColor} differ from the reference's {extractor.GetRawText()}");

        var x = new SparseTensor(c["in.feats"], c["in.coords"], model.Resolution);
        var h = model.ForwardFeatures(x);
        GoldenAssert.Output(c, "out.coords", h.Coords);
        SparseGolden.Check(c, "out.feats", h.Feats);
        var items = model.ToRepresentation(h);
        try
        {
            for (int b = 0; b < items.Count; b++)
            {
                var fc = items[b];
                var p = $"out.{b}.";
                // Everything FlexiCubes gets, by output name; colours exist only with use_color = true.
                var vid = fc.VertexIds();
                var cid = fc.CubeIds();
                var w = fc.DenseWeights().index_select(0, cid);
                var actual = new Dictionary<string, Func<Tensor?>>
                {
                    ["v_pos"] = () => fc.VertexPositions,
                    ["v_attrs"] = () => fc.VertexAttributes,
                    ["fc_vertices_at_v_pos"] = () => fc.DeformedVertices(),
                    ["fc_scalar_field_at_v_pos"] = () => fc.DenseScalarField().index_select(0, vid),
                    ["fc_colors_at_v_pos"] = () => fc.DenseColors()?.index_select(0, vid),
                    ["fc_beta_at_cubes"] = () => w[.., 0..12],
                    ["fc_alpha_at_cubes"] = () => w[.., 12..20],
                    ["fc_gamma_f_at_cubes"] = () => w[.., 20],
                };
                foreach (var name in c.NamesStartingWith(p))
                {
                    var key = name[p.Length..];
                    var value = actual.TryGetValue(key, out var f) ? f() : throw new Xunit.Sdk.XunitException($"{c.Name}: no way to compute '{name}'");
                    GoldenAssert.Output(c, name, value ?? throw new Xunit.Sdk.XunitException($"{c.Name}: '{name}' is in the reference but the decoder (use_color {model.UseColor}) makes none"));
                }
                // The dense vertex table indexed at v_pos equals the deformed vertices computed directly.
                var verts = fc.DenseVertices().index_select(0, vid);
                if (c.Has(p + "fc_vertices_at_v_pos")) GoldenAssert.Output(c, p + "fc_vertices_at_v_pos", verts);
            }
            if (c.Has($"out.{items.Count}.v_pos"))
                throw new Xunit.Sdk.XunitException($"{c.Name}: the reference has more samples than the {items.Count} decoded");
        }
        finally
        {
            foreach (var fc in items) fc.Dispose();
        }
    }
}
