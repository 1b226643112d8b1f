using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// Golden family <c>mdt_losses</c>: MDT-dist's <c>training_losses</c> (VM + VD; discrete, continuous and the cm
/// baseline) through Core's <see cref="MdtDistObjective"/>, with TRELLIS networks as student (<c>model.*</c>) and
/// teacher (<c>teacher.*</c>): <see cref="SparseStructureFlowModel"/> for the dense cases, <see cref="SLatFlowModel"/>
/// for <c>mdt_losses_sparse_*</c>. Every listed output (loss terms, elementwise losses, v_fake, x_fake and each
/// get_v_pred_tgt local of the VM and VD calls) and every <c>grad.*</c> of <c>terms.loss</c> is compared. The case
/// <c>mdt_losses_schedule</c> (sample_t / get_target_t, no network) is checked through
/// <see cref="DistillationTimeSchedule"/>.
/// </summary>
public sealed class MdtLossesGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "mdt_losses";

    public void Run(GoldenCase c)
    {
        if (c.Kind == "mdt_schedule") { RunSchedule(c); return; }
        using var scope = torch.NewDisposeScope();
        var settings = Settings(c.Settings.GetProperty("trainer_args"));
        var objective = MdtDistObjective.Create(settings);
        bool sparse = c.ConfigName == "SLatFlowModel";

        nn.Module studentModule, teacherModule;
        IFlowModel student, teacher;
        Latent x0;
        if (sparse)
        {
            var s = TrellisCheckpoint.Build<SLatFlowModel>(TrellisModelConfig.FromJson(c.Config), ScalarType.Float64);
            var t = TrellisCheckpoint.Build<SLatFlowModel>(TrellisModelConfig.FromJson(c.Root.GetProperty("teacher_config")), ScalarType.Float64);
            SparseGolden.LoadExact(s, c.WithPrefix("model."), c.Name);
            SparseGolden.LoadExact(t, c.WithPrefix("teacher."), c.Name);
            (studentModule, teacherModule) = (s, t);
            (student, teacher) = (new SLatFlowAdapter(s), new SLatFlowAdapter(t));
            x0 = new SparseTensor(c["in.x_0"], c["in.coords"], (int)s.Config.Resolution).ToLatent();
        }
        else
        {
            var s = GoldenModels.Load<SparseStructureFlowModel>(c);
            var teacherConfig = c.Root.GetProperty("teacher_config");
            var t = (SparseStructureFlowModel)TrellisCheckpoint.Build(
                new TrellisModelConfig(teacherConfig.GetProperty("name").GetString()!, JsonNode.Parse(teacherConfig.GetProperty("args").GetRawText())!.AsObject()),
                ScalarType.Float64);
            TrellisCheckpoint.LoadStateDict(t, c.WithPrefix("teacher."), strict: true, source: $"golden case {c.Name} (teacher)");
            s.AttentionBackend = AttentionBackend.Math;
            t.AttentionBackend = AttentionBackend.Math;
            (studentModule, teacherModule) = (s, t);
            (student, teacher) = (new SparseStructureFlowAdapter(s), new SparseStructureFlowAdapter(t));
            x0 = Latent.Dense(c["in.x_0"]);
        }
        studentModule.train();
        teacherModule.eval();
        foreach (var p in teacherModule.parameters()) p.requires_grad = false;
        foreach (var p in studentModule.parameters()) p.requires_grad = true;

        // in.noise_fake exists only when the objective has a VD term (λ_VD > 0): the reference draws it only then.
        var noiseFake = c.Optional("in.noise_fake");
        if ((noiseFake is null) != (settings.LambdaVd == 0))
            throw new Xunit.Sdk.XunitException($"{c.Name}: lambda_vd = {settings.LambdaVd} but in.noise_fake is {(noiseFake is null ? "absent" : "present")}");
        var draws = new MdtDistDraws(c["in.noise"], c["in.t_raw"], noiseFake);
        var terms = objective.Compute(student, teacher, x0, c["in.cond"], draws);
        terms.Loss.backward();

        // Every out.* and grad.* the file holds is compared (an output the objective does not produce fails the case).
        var outputs = c.NamesStartingWith("out.");
        foreach (var name in outputs)
            GoldenReport.Output(c, name, Actual(c, terms, name));
        var grads = c.NamesStartingWith("grad.");
        var named = studentModule.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        if (grads.Count != 0 && grads.Count != named.Count)
            throw new Xunit.Sdk.XunitException($"{c.Name}: {grads.Count} golden gradients but the student has {named.Count} parameters");
        foreach (var g in grads)
        {
            var pname = g["grad.".Length..];
            if (!named.TryGetValue(pname, out var p)) throw new Xunit.Sdk.XunitException($"{c.Name}: no student parameter '{pname}'");
            var grad = p.grad ?? throw new Xunit.Sdk.XunitException($"{c.Name}: parameter '{pname}' received no gradient");
            GoldenReport.Output(c, g, grad);
        }
        if (outputs.Count == 0) throw new Xunit.Sdk.XunitException($"{c.Name}: nothing compared");
        studentModule.Dispose();
        teacherModule.Dispose();
    }

    private static Tensor Actual(GoldenCase c, MdtDistTerms terms, string name)
    {
        Tensor Need(Tensor? t) => t ?? throw new Xunit.Sdk.XunitException($"{c.Name}: '{name}' is not produced by this configuration");
        switch (name)
        {
            case "out.t": return terms.T;
            case "out.loss": return terms.Elementwise;
            case "out.loss_vm": return Need(terms.Vm?.Elementwise);
            case "out.loss_vd": return Need(terms.Vd?.Elementwise);
            case "out.terms.loss": return terms.Loss;
            case "out.terms.loss_vm": return Need(terms.LossVm);
            case "out.terms.loss_vd": return Need(terms.LossVd);
            case "out.v_fake": return Need(terms.Vd?.VFake);
            case "out.x_fake": return Need(terms.Vd?.XFake);
        }
        DistillationPair? pair = name.StartsWith("out.vm.", StringComparison.Ordinal) ? terms.Vm?.Pair
            : name.StartsWith("out.vd.", StringComparison.Ordinal) ? terms.Vd?.Pair
            : throw new Xunit.Sdk.XunitException($"{c.Name}: unknown golden output '{name}'");
        var local = name["out.vm.".Length..];
        if (pair is null || !pair.TryGetValue(local, out var value))
            throw new Xunit.Sdk.XunitException($"{c.Name}: the objective has no intermediate '{local}' for '{name}'");
        return value;
    }

    internal static MdtDistSettings Settings(JsonElement a)
    {
        var schedule = a.GetProperty("t_schedule");
        TimeSampler sampler = schedule.GetProperty("name").GetString() switch
        {
            "logitNormal" => new LogitNormalTimeSampler(schedule.GetProperty("args").GetProperty("mean").GetDouble(), schedule.GetProperty("args").GetProperty("std").GetDouble()),
            "uniform" => UniformTimeSampler.Instance,
            var other => throw new Xunit.Sdk.XunitException($"unknown t_schedule '{other}'"),
        };
        if (a.TryGetProperty("rescale_t", out var r) && r.GetDouble() != 1.0) throw new Xunit.Sdk.XunitException("rescale_t only affects snapshots; expected 1.0");
        if (a.TryGetProperty("p_uncond", out var pu) && pu.GetDouble() != 0.0) throw new Xunit.Sdk.XunitException("p_uncond > 0 (condition dropout) is not part of these cases");
        return new MdtDistSettings
        {
            Mode = a.GetProperty("distill_type").GetString() switch
            {
                "discrete" => DistillationMode.Discrete,
                "continuous" => DistillationMode.Continuous,
                "cm" => DistillationMode.ConsistencyModel,
                var other => throw new Xunit.Sdk.XunitException($"unknown distill_type '{other}'"),
            },
            Interval = a.GetProperty("distill_interval").GetDouble(),
            SigmaMin = a.GetProperty("sigma_min").GetDouble(),
            GuidanceVm = a.GetProperty("cfg_teacher_vm").GetDouble(),
            GuidanceVd = a.GetProperty("cfg_teacher_vd").GetDouble(),
            Multiphase = a.GetProperty("multiphase").GetInt32(),
            LambdaVm = a.GetProperty("lambda_vm").GetDouble(),
            LambdaVd = a.GetProperty("lambda_vd").GetDouble(),
            DNorm = a.GetProperty("d_norm").GetBoolean(),
            TimeSampler = sampler,
        };
    }

    private static void RunSchedule(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        var baseSettings = Settings(c.Settings.GetProperty("trainer_args"));
        foreach (var (mode, key) in new[] { (DistillationMode.Discrete, "discrete"), (DistillationMode.Continuous, "continuous"), (DistillationMode.ConsistencyModel, "cm") })
        {
            var ln = new DistillationTimeSchedule(mode, baseSettings.Interval, baseSettings.SigmaMin, 1, baseSettings.TimeSampler);
            GoldenReport.Output(c, $"out.sample_t.{key}.logitNormal", ln.FromRaw(c["in.raw_normal"]));
            var un = new DistillationTimeSchedule(mode, baseSettings.Interval, baseSettings.SigmaMin, 1, UniformTimeSampler.Instance);
            GoldenReport.Output(c, $"out.sample_t.{key}.uniform", un.FromRaw(c["in.raw_uniform"]));
            foreach (var m in new[] { 1, 4 })
                GoldenReport.Close(c, $"out.get_target_t.{key}.multiphase{m}", c[$"out.get_target_t.{key}.multiphase{m}"],
                    new DistillationTimeSchedule(mode, baseSettings.Interval, baseSettings.SigmaMin, m).TargetTime(c["in.t_query"]), 0.0);
        }
    }
}
