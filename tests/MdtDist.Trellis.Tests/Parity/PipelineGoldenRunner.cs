using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Family <c>pipeline</c>: TRELLIS's own two-stage pipeline methods. The runner writes the case as a TRELLIS model folder
/// (<c>pipeline.json</c> from <c>settings.pipeline</c>, <c>ckpts/KEY.json</c> + <c>.safetensors</c> per model from the
/// <c>KEY.*</c> tensors), loads it with <see cref="TrellisPipeline.FromFolder"/> in float64 and runs it twice with the
/// given stage noises: once stage by stage through the public stages, once through <see cref="TrellisPipeline.Run(TrellisCondition, TrellisRunOptions?)"/>.
/// </summary>
public sealed class PipelineGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "pipeline";

    public void Run(GoldenCase c)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-golden-pipeline-").FullName;
        try
        {
            var pipeline = WriteFolder(c, dir);
            using var scope = torch.NewDisposeScope();
            int numSamples = c.Settings.TryGetProperty("num_samples", out var ns) ? ns.GetInt32() : 1;
            var cond = c["in.cond"];
            var condition = c.Has("in.neg_cond") ? new TrellisCondition(cond, c["in.neg_cond"]) : NegCondOf(c, cond);

            // Stage by stage, as TRELLIS's run() calls them.
            var z = pipeline.SampleSparseStructure(condition, numSamples, new TrellisStageOptions { Noise = c["in.noise_ss"] }).Result;
            if (c.Has("out.z")) GoldenReport.Output(c, "out.z", z);
            var coords = pipeline.DecodeOccupancy(z);
            GoldenReport.Output(c, "out.coords", coords);
            var slat = pipeline.SampleStructuredLatent(condition, coords, new TrellisStageOptions { Noise = c["in.noise_slat"] }).Result;
            GoldenReport.Output(c, "out.slat_feats", slat.Feats);
            using var decoded = pipeline.Decode(slat, pipeline.AvailableFormats);
            CompareGaussians(c, decoded.Gaussians ?? Array.Empty<Gaussians>());

            // The same through Run with the given noises.
            using var run = pipeline.Run(condition, new TrellisRunOptions { NumSamples = numSamples, StructureNoise = c["in.noise_ss"], LatentNoise = c["in.noise_slat"] });
            GoldenReport.Output(c, "out.coords", run.Coords);
            GoldenReport.Output(c, "out.slat_feats", torch.cat(run.Samples.Where(s => !s.IsEmpty).Select(s => s.Latent!).ToArray(), 0));
            CompareGaussians(c, run.Samples.Where(s => s.Gaussians is not null).Select(s => s.Gaussians!).ToList());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static TrellisCondition NegCondOf(GoldenCase c, Tensor cond)
    {
        var neg = c.Settings.TryGetProperty("neg_cond", out var n) ? n.GetString() : "zeros_like(cond)";
        if (neg != "zeros_like(cond)") throw new Xunit.Sdk.XunitException($"{c.Name}: settings.neg_cond '{neg}' is neither zeros_like(cond) nor given as in.neg_cond");
        return TrellisCondition.FromImageFeatures(cond);
    }

    private static readonly string[] GaussianGetters = { "get_xyz", "get_features", "get_scaling", "get_rotation", "get_opacity" };

    private static void CompareGaussians(GoldenCase c, IReadOnlyList<Gaussians> gaussians)
    {
        for (int i = 0; i < gaussians.Count; i++)
        {
            var g = gaussians[i];
            var actual = new Dictionary<string, Func<Tensor>>
            {
                ["get_xyz"] = g.GetXyz, ["get_features"] = g.GetFeatures, ["get_scaling"] = g.GetScaling,
                ["get_rotation"] = g.GetRotation, ["get_opacity"] = g.GetOpacity,
            };
            foreach (var name in c.Role("outputs").Where(n => n.StartsWith($"out.gaussians.{i}.", StringComparison.Ordinal)))
            {
                var getter = name[$"out.gaussians.{i}.".Length..];
                if (!actual.TryGetValue(getter, out var f)) throw new Xunit.Sdk.XunitException($"{c.Name}: no way to compute '{name}'");
                GoldenReport.Output(c, name, f());
            }
        }
        if (c.Role("outputs").Any(n => n.StartsWith($"out.gaussians.{gaussians.Count}.", StringComparison.Ordinal)))
            throw new Xunit.Sdk.XunitException($"{c.Name}: the reference has more Gaussian sets than the {gaussians.Count} decoded");
    }

    /// <summary>Writes the case as a TRELLIS model folder and loads it.</summary>
    private static TrellisPipeline WriteFolder(GoldenCase c, string dir)
    {
        var settings = JsonNode.Parse(c.Settings.GetProperty("pipeline").GetRawText())!.AsObject();
        var models = settings["models"]!.AsObject();
        var paths = new JsonObject();
        Directory.CreateDirectory(Path.Combine(dir, "ckpts"));
        foreach (var (key, config) in models)
        {
            File.WriteAllText(Path.Combine(dir, "ckpts", key + ".json"), config!.ToJsonString());
            SafeTensors.Save(Path.Combine(dir, "ckpts", key + ".safetensors"), c.WithPrefix(key + "."));
            paths[key] = "ckpts/" + key;
        }
        settings["models"] = paths;
        var root = new JsonObject { ["name"] = "TrellisImageTo3DPipeline", ["args"] = settings };
        File.WriteAllText(Path.Combine(dir, "pipeline.json"), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return TrellisPipeline.FromFolder(dir, ScalarType.Float64);
    }
}
