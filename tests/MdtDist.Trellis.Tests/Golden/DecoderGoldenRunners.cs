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
        var model = SLatGaussianDecoder.FromConfig(c.Config, ScalarType.Float64);
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
            var again = model.Forward(x);
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
