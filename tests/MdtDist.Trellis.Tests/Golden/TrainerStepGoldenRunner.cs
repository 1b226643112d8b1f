using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Golden family <c>trainer_step</c>: consecutive updates of TRELLIS's <c>BasicTrainer.run_step</c>
/// (<c>fp16_mode = "inflat_all"</c>) on the MDT-dist objective, replayed through
/// <see cref="MdtDistiller.TrainStep(IReadOnlyList{DistillationBatch}, IReadOnlyList{MdtDistDraws}?)"/> — the same update
/// as <see cref="MdtDistiller.Train"/> — with master weights and TRELLIS's dynamic loss scale in float64. Every
/// setting comes from the manifest (<c>settings.update_args</c>: optimizer, EMA rates, scale growth, clipper;
/// <c>settings.trainer_args</c>; <c>settings.steps</c>, <c>batch_split</c>, <c>nonfinite</c>, <c>log_scale_initial</c>),
/// and every <c>out.step*</c> tensor present is compared (an absent loss / grad norm / clip bound must be non-finite /
/// null here too).
/// </summary>
public sealed class TrainerStepGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "trainer_step";

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        var settings = c.Settings;
        var update = settings.GetProperty("update_args");
        var objective = MdtDistObjective.Create(MdtLossesGoldenRunner.Settings(settings.GetProperty("trainer_args")));
        if (c.ConfigName != "SparseStructureFlowModel")
            throw new Xunit.Sdk.XunitException($"{c.Name}: trainer_step cases on {c.ConfigName} (sparse latents) are not supported by this runner yet");

        var student = GoldenModels.Load<SparseStructureFlowModel>(c);
        var teacherConfig = c.Root.GetProperty("teacher_config");
        var teacher = (SparseStructureFlowModel)TrellisCheckpoint.Build(
            new TrellisModelConfig(teacherConfig.GetProperty("name").GetString()!, JsonNode.Parse(teacherConfig.GetProperty("args").GetRawText())!.AsObject()),
            ScalarType.Float64);
        TrellisCheckpoint.LoadStateDict(teacher, c.WithPrefix("teacher."), strict: true, source: $"golden case {c.Name} (teacher)");
        student.AttentionBackend = AttentionBackend.Math;
        teacher.AttentionBackend = AttentionBackend.Math;
        foreach (var p in student.parameters()) p.requires_grad = true;
        var teacherFlow = new TrellisFlowModel(teacher);
        MdtDistiller.Freeze(teacherFlow);

        var options = Options(c, update, settings);
        using var distiller = new MdtDistiller(teacherFlow, new TrellisFlowModel(student), objective, options);
        var paramNames = student.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();

        int steps = settings.GetProperty("steps").GetInt32();
        int split = settings.GetProperty("batch_split").GetInt32();
        var nonfinite = settings.TryGetProperty("nonfinite", out var nf)
            ? nf.EnumerateArray().Select(e => (e[0].GetInt32(), e[1].GetInt32())).ToHashSet()
            : new HashSet<(int, int)>();
        var x0All = c["in.x_0"];
        var condAll = c.Has("in.cond") ? c["in.cond"] : null;
        var noiseFakeAll = c.Has("in.noise_fake") ? c["in.noise_fake"] : null;
        if (x0All.shape[0] != steps || x0All.shape[1] != split)
            throw new Xunit.Sdk.XunitException($"{c.Name}: in.x_0 has shape [{string.Join(", ", x0All.shape)}], expected [{steps}, {split}, ...]");

        var outputs = c.Role("outputs").ToHashSet();
        var compared = new HashSet<string>();
        for (int s = 0; s < steps; s++)
        {
            using var stepScope = torch.NewDisposeScope();
            var parts = new List<DistillationBatch>();
            var draws = new List<MdtDistDraws>();
            for (int k = 0; k < split; k++)
            {
                var x0 = x0All[s, k].clone();
                if (nonfinite.Contains((s, k))) x0.view(-1)[0] = torch.tensor(double.PositiveInfinity, ScalarType.Float64);
                parts.Add(new DistillationBatch(Latent.Dense(x0), condAll?[s, k]));
                draws.Add(new MdtDistDraws(c["in.noise"][s, k], c["in.t_raw"][s, k], noiseFakeAll?[s, k]));
            }
            var report = distiller.TrainStep(parts, draws);

            string P(string what) => $"out.step{s}.{what}";
            void Scalar(string what, double? actual)
            {
                var name = P(what);
                if (!outputs.Contains(name))
                {
                    if (actual is { } a && double.IsFinite(a))
                        throw new Xunit.Sdk.XunitException($"{c.Name}: the reference has no finite '{name}' but this step gave {a}");
                    return;
                }
                if (actual is null) throw new Xunit.Sdk.XunitException($"{c.Name}: '{name}' is {c[name].item<double>()} in the reference but none here");
                GoldenReport.Output(c, name, torch.tensor(actual.Value, ScalarType.Float64));
                compared.Add(name);
            }
            Scalar("loss", report.Loss);
            Scalar("grad_norm", report.GradNorm);
            Scalar("log_scale", distiller.LogLossScale);
            Scalar("clip_max_norm", report.ClipMaxNorm);
            Scalar("skipped", report.Skipped ? 1.0 : 0.0);
            for (int i = 0; i < paramNames.Count; i++)
            {
                var name = P("master." + paramNames[i]);
                if (!outputs.Contains(name)) continue;
                GoldenReport.Output(c, name, distiller.MasterParameters[i]);
                compared.Add(name);
            }
            for (int r = 0; r < options.EmaRates.Count; r++)
            {
                var ema = distiller.EmaParameters(r);
                foreach (var pn in paramNames)
                {
                    var name = P($"ema{r}.{pn}");
                    if (!outputs.Contains(name)) continue;
                    GoldenReport.Output(c, name, ema[pn]);
                    compared.Add(name);
                }
            }
            // the model itself holds the masters (cast to its dtype: float64 here)
            foreach (var (pn, p) in student.named_parameters())
                if (outputs.Contains(P("master." + pn)))
                    GoldenReport.Output(c, P("master." + pn), p);
        }
        var missed = outputs.Except(compared).ToList();
        if (missed.Count > 0) throw new Xunit.Sdk.XunitException($"{c.Name}: outputs not produced by this runner: {string.Join(", ", missed.Take(5))}{(missed.Count > 5 ? ", ..." : "")}");
        student.Dispose();
        teacher.Dispose();
    }

    /// <summary>The trainer settings of TRELLIS's <c>BasicTrainer</c> arguments, as the manifest gives them.</summary>
    private static MdtDistillerOptions Options(GoldenCase c, JsonElement update, JsonElement settings)
    {
        var opt = update.GetProperty("optimizer");
        if (opt.GetProperty("name").GetString() != "AdamW")
            throw new Xunit.Sdk.XunitException($"{c.Name}: optimizer {opt.GetProperty("name").GetString()} is not supported (AdamW only)");
        var a = opt.GetProperty("args");
        double Arg(string name, double fallback) => a.TryGetProperty(name, out var v) ? v.GetDouble() : fallback;
        // torch.optim.AdamW's defaults where the manifest leaves an argument out
        double beta1 = 0.9, beta2 = 0.999;
        if (a.TryGetProperty("betas", out var betas)) { beta1 = betas[0].GetDouble(); beta2 = betas[1].GetDouble(); }
        if (a.TryGetProperty("amsgrad", out var ams) && ams.GetBoolean())
            throw new Xunit.Sdk.XunitException($"{c.Name}: AdamW amsgrad is not supported");

        IReadOnlyList<double> emaRates = !update.TryGetProperty("ema_rate", out var er) ? new[] { 0.9999 }
            : er.ValueKind == JsonValueKind.Array ? er.EnumerateArray().Select(x => x.GetDouble()).ToArray() : new[] { er.GetDouble() };

        GradientClipping? clipping = null;
        if (update.TryGetProperty("grad_clip", out var gc) && gc.ValueKind != JsonValueKind.Null)
        {
            if (gc.ValueKind != JsonValueKind.Object || gc.GetProperty("name").GetString() != "AdaptiveGradClipper")
                throw new Xunit.Sdk.XunitException($"{c.Name}: grad_clip {gc.GetRawText()} is not supported (AdaptiveGradClipper only)");
            var ga = gc.GetProperty("args");
            // TRELLIS's AdaptiveGradClipper defaults: max_norm None, clip_percentile 95, buffer_size 1000
            clipping = new GradientClipping(
                MaxNorm: ga.TryGetProperty("max_norm", out var mn) && mn.ValueKind != JsonValueKind.Null ? mn.GetDouble() : null,
                Percentile: ga.TryGetProperty("clip_percentile", out var cp) ? cp.GetDouble() : 95.0,
                BufferSize: ga.TryGetProperty("buffer_size", out var bs) ? bs.GetInt32() : 1000);
        }
        return new MdtDistillerOptions
        {
            LearningRate = Arg("lr", 1e-3),
            Beta1 = beta1,
            Beta2 = beta2,
            Epsilon = Arg("eps", 1e-8),
            WeightDecay = Arg("weight_decay", 1e-2),
            EmaRates = emaRates,
            Clipping = clipping,
            BatchSplit = settings.GetProperty("batch_split").GetInt32(),
            Precision = TrainingPrecision.Fp32MasterWeights, // inflat_all: masters (float64 for a float64 model)
            LossScaling = LossScaling.Dynamic,               // TRELLIS's rule, whatever the dtype
            LossScaleGrowth = update.TryGetProperty("fp16_scale_growth", out var g) ? g.GetDouble() : 1e-3,
            InitialLogLossScale = settings.TryGetProperty("log_scale_initial", out var ls) ? ls.GetDouble() : 20.0,
            LogEvery = 0,
        };
    }
}
