using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MdtDist.Core.Distillation;
using MdtDist.Core.Evaluation;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Core.Training;
using MdtDist.Samples;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace FewStepSampling;

/// <summary>Budgets of one run of the quickstart.</summary>
public sealed record FewStepOptions
{
    /// <summary>MDT-dist steps of the student.</summary>
    public int DistillSteps { get; init; } = 2000;

    /// <summary>Regression steps fitting the teacher to the exact velocity.</summary>
    public int TeacherSteps { get; init; } = 1500;

    /// <summary>Samples per evaluated schedule (and data samples it is compared with).</summary>
    public int EvalSamples { get; init; } = 4096;
}

/// <summary>One evaluated schedule.</summary>
/// <param name="Name">Model and schedule.</param>
/// <param name="Evaluations">Network evaluations per sample.</param>
/// <param name="Milliseconds">Wall time of the batch (load-dependent).</param>
/// <param name="SlicedWasserstein">Sliced Wasserstein-2 distance to fresh data samples (lower is better).</param>
public sealed record FewStepRow(string Name, int Evaluations, double Milliseconds, double SlicedWasserstein);

/// <summary>What a run measured.</summary>
/// <param name="Rows">Every schedule, in the printed order.</param>
/// <param name="Floor">Data vs data: the two-sample floor of the distance.</param>
/// <param name="SkippedSteps">Distillation steps skipped (non-finite).</param>
public sealed record FewStepResult(IReadOnlyList<FewStepRow> Rows, double Floor, long SkippedSteps);

/// <summary>
/// The 2-D quickstart: distil a multi-step flow into a 1-step student with MDT-dist and compare the two. Data: a 2-D
/// mixture of four Gaussians under TRELLIS's path; its exact marginal velocity is known (<see cref="GaussianMixtureFlow"/>).
/// Teacher: a small MLP flow fitted to that velocity. Student: a copy of the teacher distilled with MDT-dist (Velocity
/// Matching + Velocity Distillation) by <see cref="MdtDistiller"/>. Quality: sliced Wasserstein-2 distance of the samples
/// to as many fresh data samples (lower is better; the data-vs-data floor is printed).
/// </summary>
public static class FewStepSamplingApp
{
    /// <summary>Command-line entry point; returns the exit code (0 done, 1 an unknown option or a bad value).</summary>
    public static int Run(string[] args, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(log);
        var d = new FewStepOptions();
        var steps = SampleCommandLine.Int("--steps", "MDT-dist steps of the 1-step student", min: 1, defaultValue: d.DistillSteps);
        var teacherSteps = SampleCommandLine.Int("--teacher-steps", "regression steps fitting the teacher MLP to the exact velocity", min: 1, defaultValue: d.TeacherSteps);
        var evalSamples = SampleCommandLine.Int("--eval-samples", "samples per evaluated schedule", min: 16, defaultValue: d.EvalSamples);
        var root = new RootCommand("FewStepSampling: the 2-D quickstart. Distil a multi-step flow on a Gaussian mixture into a 1-step student with MDT-dist and compare them.")
        {
            steps, teacherSteps, evalSamples,
        };
        root.SetAction(pr =>
        {
            Execute(new FewStepOptions { DistillSteps = pr.GetValue(steps), TeacherSteps = pr.GetValue(teacherSteps), EvalSamples = pr.GetValue(evalSamples) }, log);
            return 0;
        });
        return SampleCommandLine.Invoke(root, args, log);
    }

    /// <summary>Fits the teacher, distils the student, samples every schedule and prints the table.</summary>
    public static FewStepResult Execute(FewStepOptions o, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(log);
        var console = SampleCommandLine.ConsoleFor(log);
        bool bars = SampleCommandLine.CanDrawBars(console);
        var total = Stopwatch.StartNew();
        var mog = new GaussianMixtureFlow(new double[,] { { 1, 1 }, { -1, 1 }, { 1, -1 }, { -1, -1 } }, std: 0.2);
        log.WriteLine($"MDT-dist on a 2-D Gaussian mixture (float32, CPU, {torch.get_num_threads()} threads)");

        var teacher = new MlpFlow(seed: 1);
        MlpFlow? student = null;
        long skipped = 0;
        double distillSeconds = 0;
        void Work(Action<string, int, int, string> report)
        {
            // 1. Teacher: regress an MLP flow onto the exact marginal velocity.
            using (var opt = torch.optim.Adam(teacher.Module.parameters(), 2e-3))
            using (var g = new Generator(2))
            {
                for (int i = 0; i < o.TeacherSteps; i++)
                {
                    using var scope = torch.NewDisposeScope();
                    var x0 = Latent.Dense(mog.SampleData(512, g));
                    var t = torch.rand(new long[] { 512 }, generator: g);
                    var xt = x0.With(RectifiedFlowPath.Trellis.Interpolate(x0, torch.randn(new long[] { 512, 2 }, generator: g), t));
                    opt.zero_grad();
                    var loss = (teacher.Velocity(xt, t, null) - mog.Velocity(xt, t, null)).square().mean();
                    loss.backward();
                    opt.step();
                    report("teacher", i + 1, o.TeacherSteps, "");
                }
            }

            // 2. Distil a copy of the teacher into a 1-step student.
            var objective = MdtDistObjective.Create(new MdtDistSettings
            {
                Mode = DistillationMode.Discrete, DNorm = false, GuidanceVm = 0, GuidanceVd = 0, TimeSampler = UniformTimeSampler.Instance,
            });
            var data = new DelegateDataSource(step =>
            {
                using var g = new Generator((ulong)(10_000 + step));
                return new DistillationBatch(Latent.Dense(mog.SampleData(256, g)));
            });
            var options = new MdtDistillerOptions { LearningRate = 1e-3, Seed = 3, EmaRates = new[] { 0.99 }, Clipping = new GradientClipping(MaxNorm: 10.0), LogEvery = 0 };
            var watch = Stopwatch.StartNew();
            using var distiller = MdtDistiller.FromTeacher(teacher, () => new MlpFlow(seed: 4), objective, options);
            distiller.Train(data, o.DistillSteps, new InlineProgress<DistillationProgress>(p =>
                report("student", (int)p.Step, (int)p.TotalSteps, $"loss {p.Loss:F3}")));
            distillSeconds = watch.Elapsed.TotalSeconds;
            skipped = distiller.SkippedSteps;
            student = new MlpFlow(seed: 5);
            distiller.CopyEmaTo(student.Module);
        }

        if (bars)
        {
            SampleCommandLine.Bars(console).Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>
                {
                    ["teacher"] = ctx.AddTask("fitting the teacher", maxValue: o.TeacherSteps),
                    ["student"] = ctx.AddTask("distilling (MDT-dist)", maxValue: o.DistillSteps),
                };
                Work((key, done, all, extra) =>
                {
                    tasks[key].Value = done;
                    if (extra.Length > 0) tasks[key].Description = $"distilling (MDT-dist, {extra})";
                });
            });
        }
        else
        {
            Work((key, done, all, extra) =>
            {
                if (done == all) log.WriteLine(key == "teacher" ? $"fitting the teacher: {all} steps" : $"distilling (MDT-dist): {all} steps, {extra}");
            });
        }

        // 3. Sample and measure.
        using var gEval = new Generator(77);
        using var reference = mog.SampleData(o.EvalSamples, gEval);
        using var floorSet = mog.SampleData(o.EvalSamples, gEval);
        var noise = Latent.Dense(torch.randn(new long[] { o.EvalSamples, 2 }, generator: gEval));
        double Sw(Tensor x) => SampleDistances.SlicedWasserstein(x, reference, 256, new Generator(9));
        var rows = new List<FewStepRow>();
        void Row(string name, IFlowModel model, double[] grid)
        {
            using (new EulerSolver().Sample(model, noise, null, grid)) { } // warm-up
            var sw = Stopwatch.StartNew();
            using var r = new EulerSolver().Sample(model, noise, null, grid);
            sw.Stop();
            rows.Add(new FewStepRow(name, r.Evaluations, sw.Elapsed.TotalMilliseconds, Sw(r.Samples)));
        }
        Row("exact velocity, Euler 25 (TRELLIS s=3)", mog, TimeGrid.Trellis(25, 3.0));
        Row("teacher MLP, Euler 25 (TRELLIS s=3)", teacher, TimeGrid.Trellis(25, 3.0));
        Row("teacher MLP, Euler 2", teacher, TimeGrid.Trellis(2));
        Row("teacher MLP, Euler 1", teacher, TimeGrid.Trellis(1));
        Row("MDT-dist student (EMA), Euler 1", student!, TimeGrid.Trellis(1));
        double floor = Sw(floorSet);

        var table = SampleCommandLine.Table("model / schedule", "evaluations", "time ms", "SW2 to data");
        foreach (var r in rows)
            table.AddRow(Markup.Escape(r.Name), r.Evaluations.ToString(CultureInfo.InvariantCulture), r.Milliseconds.ToString("F2", CultureInfo.InvariantCulture),
                r.SlicedWasserstein.ToString("F4", CultureInfo.InvariantCulture));
        table.AddRow("(data vs data: the two-sample floor)", "", "", floor.ToString("F4", CultureInfo.InvariantCulture));
        table.Caption($"distillation: {o.DistillSteps} steps in {distillSeconds:F1} s, {skipped} skipped; total {total.Elapsed.TotalSeconds:F1} s");
        console.Write(table);
        return new FewStepResult(rows, floor, skipped);
    }
}

/// <summary>
/// A small MLP velocity network for 2-D data: input (x, t, sin πt, cos πt), 3 hidden SiLU layers of 64. Its weights are
/// drawn from a local generator (PyTorch's default bounds ±1/√fan_in), so a seed gives the same network in any process.
/// </summary>
public sealed class MlpFlow : IFlowNetwork
{
    private readonly nn.Module<Tensor, Tensor> _net;

    /// <summary>A network with weights from <paramref name="seed"/>.</summary>
    public MlpFlow(ulong seed)
    {
        _net = nn.Sequential(nn.Linear(5, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2));
        var g = new Generator(seed);
        using var noGrad = torch.no_grad();
        foreach (var layer in _net.children().OfType<TorchSharp.Modules.Linear>())
        {
            double bound = 1.0 / Math.Sqrt(layer.weight!.shape[1]);
            foreach (var p in new[] { layer.weight!, layer.bias! })
            {
                using var u = torch.rand(p.shape, generator: g);
                p.copy_(u * (2 * bound) - bound);
            }
        }
    }

    /// <inheritdoc />
    public nn.Module Module => _net;

    /// <inheritdoc />
    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        var tt = t.to(x.Data.dtype).unsqueeze(1);
        return _net.call(torch.cat(new[] { x.Data, tt, torch.sin(Math.PI * tt), torch.cos(Math.PI * tt) }, 1));
    }
}
