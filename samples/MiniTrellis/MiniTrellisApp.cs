using System.CommandLine;
using System.Diagnostics;
using MdtDist.Core.Distillation;
using MdtDist.Core.Training;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using MiniTrellis.Data;
using MiniTrellis.Evaluation;
using MiniTrellis.Model;
using MiniTrellis.Training;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace MiniTrellis;

/// <summary>Budgets of one run of the main job (or of the ablation).</summary>
/// <param name="Stage1Steps">MDT-dist steps of the stage-1 student.</param>
/// <param name="Stage2Steps">MDT-dist steps of the stage-2 student.</param>
/// <param name="Batch1">Stage-1 batch size.</param>
/// <param name="Batch2">Stage-2 batch size.</param>
/// <param name="PerClass">Evaluated samples (and held-out reference shapes) per class.</param>
/// <param name="DataShapes">Training shapes encoded for the distillation's x0.</param>
public sealed record JobBudget(int Stage1Steps, int Stage2Steps, int Batch1, int Batch2, int PerClass, int DataShapes)
{
    /// <summary>The default main job.</summary>
    public static JobBudget Default { get; } = new(200, 100, 16, 8, 6, 900);

    /// <summary>The default ablation: five distillations, so a fifth of the main job's steps each, and 3 samples per class.</summary>
    public static JobBudget Ablation { get; } = new(40, 20, 16, 8, 3, 900);

    /// <summary>The tiny budget of <c>--quick</c> (the end-to-end test).</summary>
    public static JobBudget Quick { get; } = new(3, 2, 4, 2, 2, 36);
}

/// <summary>
/// The miniature two-stage TRELLIS main job: load the shipped teachers, distil a 1–2 step student of each stage with
/// MDT-dist (VM + VD), sample the same seeds and classes under every schedule and measure them in 3D. Subcommands:
/// <c>train-teachers</c> (VAEs + flow-matching teachers, the shipped files) and <c>ablation</c> (the paper's table).
/// </summary>
public static class MiniTrellisApp
{
    /// <summary>The default output folder of the main job.</summary>
    public static string DefaultOut => Path.Combine(Path.GetTempPath(), "mini-trellis");

    /// <summary>Command-line entry point; returns the exit code (0 ok, 130 cancelled, 3 bad input).</summary>
    public static int Run(string[] args)
    {
        var outOpt = new Option<string?>("--out") { Description = $"output folder (default {DefaultOut})" };
        var modelOpt = new Option<string?>("--model") { Description = "teacher folder (default: the shipped teachers next to the program)" };
        var quickOpt = new Option<bool>("--quick") { Description = "tiny budget (seconds): a smoke test of the whole job" };
        var saveOpt = new Option<bool>("--save-samples") { Description = "write every evaluated sample and every reference shape as a .ply point set" };
        var threadsOpt = new Option<int>("--threads") { Description = "CPU threads for libtorch (default 1: best on a shared 2-core machine)", DefaultValueFactory = _ => 1 };
        var s1Opt = new Option<int?>("--stage1-steps") { Description = "MDT-dist steps for the stage-1 student" };
        var s2Opt = new Option<int?>("--stage2-steps") { Description = "MDT-dist steps for the stage-2 student" };

        var root = new RootCommand("MiniTrellis: a miniature two-stage TRELLIS distilled by MDT-dist, measured in 3D.");
        foreach (var o in new Option[] { outOpt, modelOpt, quickOpt, saveOpt, threadsOpt, s1Opt, s2Opt }) root.Options.Add(o);

        var teachers = new Command("train-teachers", "train the VAEs and the two flow-matching teachers and write them as a TRELLIS model folder");
        var tOut = new Option<string>("--out") { Description = "model folder to write", DefaultValueFactory = _ => "mini-trellis-model" };
        var vaeOpt = new Option<int?>("--vae-steps") { Description = "steps of each VAE" };
        foreach (var o in new Option[] { tOut, quickOpt, threadsOpt, s1Opt, s2Opt, vaeOpt }) teachers.Options.Add(o);
        root.Subcommands.Add(teachers);

        var ablation = new Command("ablation", "distil VM only, VD only, VM + VD, the consistency baseline and continuous VM; evaluate each at 1 and 2 steps");
        foreach (var o in new Option[] { outOpt, modelOpt, quickOpt, threadsOpt, s1Opt, s2Opt }) ablation.Options.Add(o);
        root.Subcommands.Add(ablation);

        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 160);
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            AnsiConsole.MarkupLine("[yellow]Stopping after the current step (Ctrl-C again to abort)...[/]");
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        int Guard(Func<int> body)
        {
            try { return body(); }
            catch (OperationCanceledException)
            {
                AnsiConsole.MarkupLine("[yellow]Stopped. Distillation checkpoints are kept: run the same command again to resume.[/]");
                return 130;
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or ArgumentException && Environment.GetEnvironmentVariable("MINITRELLIS_DEBUG") is null)
            {
                AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                return 3;
            }
        }

        root.SetAction(pr => Guard(() =>
        {
            torch.set_num_threads(pr.GetValue(threadsOpt));
            var budget = Budget(pr.GetValue(quickOpt), pr.GetValue(s1Opt), pr.GetValue(s2Opt));
            return MainJob(pr.GetValue(outOpt) ?? DefaultOut, pr.GetValue(modelOpt) ?? MiniTrellisModels.ShippedFolder, budget, pr.GetValue(saveOpt), cts.Token);
        }));
        teachers.SetAction(pr => Guard(() =>
        {
            torch.set_num_threads(pr.GetValue(threadsOpt));
            var b = pr.GetValue(quickOpt) ? TeacherBudget.Quick : TeacherBudget.Default;
            b = b with
            {
                Stage1Steps = pr.GetValue(s1Opt) ?? b.Stage1Steps, Stage2Steps = pr.GetValue(s2Opt) ?? b.Stage2Steps,
                StructureVaeSteps = pr.GetValue(vaeOpt) ?? b.StructureVaeSteps, LatentVaeSteps = pr.GetValue(vaeOpt) ?? b.LatentVaeSteps,
            };
            return TeacherTraining.Run(pr.GetValue(tOut)!, b, cts.Token);
        }));
        ablation.SetAction(pr => Guard(() =>
        {
            torch.set_num_threads(pr.GetValue(threadsOpt));
            var budget = Budget(pr.GetValue(quickOpt), pr.GetValue(s1Opt), pr.GetValue(s2Opt), ablation: true);
            return Ablation(pr.GetValue(outOpt) ?? DefaultOut + "-ablation", pr.GetValue(modelOpt) ?? MiniTrellisModels.ShippedFolder, budget, cts.Token);
        }));
        try
        {
            return root.Parse(args).Invoke();
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static JobBudget Budget(bool quick, int? s1, int? s2, bool ablation = false)
    {
        var b = quick ? JobBudget.Quick : ablation ? JobBudget.Ablation : JobBudget.Default;
        return b with { Stage1Steps = s1 ?? b.Stage1Steps, Stage2Steps = s2 ?? b.Stage2Steps };
    }

    /// <summary>The settings of the students' distillation (see docs/mini-trellis.md for every deviation from MDT-dist's).</summary>
    public static MdtDistSettings DistillationSettings(double guidance) => new() { GuidanceVm = guidance, GuidanceVd = guidance };

    /// <summary>The distiller options of stage <paramref name="stage"/> (checkpoints under <paramref name="dir"/>).</summary>
    public static MdtDistillerOptions DistillerOptions(string dir, int stage) => new()
    {
        LearningRate = stage == 1 ? 1e-4 : 1e-4,
        EmaRates = new[] { 0.99 },
        Seed = 100 + stage,
        CheckpointDirectory = dir,
        CheckpointEvery = 50,
        KeepCheckpoints = 2,
        LogEvery = 0,
    };

    /// <summary>Distils both stages into <paramref name="dir"/>; returns the students and the distillation seconds.</summary>
    public static (SparseStructureFlowModel S1, SLatFlowModel S2, double Seconds) DistilBoth(MiniTrellisModels m, FlowData data, JobBudget budget,
        MdtDistSettings settings, string dir, string label, CancellationToken ct)
    {
        var objective = MdtDistObjective.Create(settings);
        // Continuous VM differentiates the student's JVP (double backward); libtorch's fused CPU attention kernels have
        // no second derivative, so that student trains in float64, where the networks use explicit-math attention.
        bool f64 = settings.Mode == DistillationMode.Continuous;
        T Student<T>(string name) where T : nn.Module
        {
            var net = (T)MiniTrellisModels.Build(name, 0);
            if (f64) net.to(ScalarType.Float64);
            return net;
        }
        var sw = Stopwatch.StartNew();
        SparseStructureFlowModel? s1 = null;
        SLatFlowModel? s2 = null;
        Progress(ctx =>
        {
            var t1 = ctx.AddTask($"{label}: stage 1", maxValue: budget.Stage1Steps);
            var t2 = ctx.AddTask($"{label}: stage 2", maxValue: budget.Stage2Steps);
            var teacher1 = new SparseStructureFlowAdapter(m.StructureFlow);
            using (var d1 = MdtDistiller.FromTeacher(teacher1, () => new SparseStructureFlowAdapter(Student<SparseStructureFlowModel>("ss_flow")),
                       objective, DistillerOptions(Path.Combine(dir, "stage1"), 1)))
            {
                d1.TryResume();
                t1.Value = d1.Step;
                d1.Train(new DelegateDataSource(step => data.StructureBatch(step, budget.Batch1)), budget.Stage1Steps,
                    new InlineProgress<DistillationProgress>(p => { t1.Value = p.Step; t1.Description = $"{label}: stage 1 (loss {p.Loss:F3})"; }), ct);
                t1.Value = budget.Stage1Steps;
                s1 = (SparseStructureFlowModel)MiniTrellisModels.Build("ss_flow", 0);
                d1.CopyEmaTo(s1);
            }
            var teacher2 = new SLatFlowAdapter(m.LatentFlow);
            using (var d2 = MdtDistiller.FromTeacher(teacher2, () => f64 ? new CastingFlowNetwork(new SLatFlowAdapter(Student<SLatFlowModel>("slat_flow")), ScalarType.Float64) : new SLatFlowAdapter(Student<SLatFlowModel>("slat_flow")),
                       objective, DistillerOptions(Path.Combine(dir, "stage2"), 2)))
            {
                d2.TryResume();
                t2.Value = d2.Step;
                d2.Train(new DelegateDataSource(step => data.LatentBatch(step, budget.Batch2)), budget.Stage2Steps,
                    new InlineProgress<DistillationProgress>(p => { t2.Value = p.Step; t2.Description = $"{label}: stage 2 (loss {p.Loss:F3})"; }), ct);
                t2.Value = budget.Stage2Steps;
                s2 = (SLatFlowModel)MiniTrellisModels.Build("slat_flow", 0);
                d2.CopyEmaTo(s2);
            }
        });
        s1!.eval(); s2!.eval();
        return (s1, s2, sw.Elapsed.TotalSeconds);
    }

    private static void Progress(Action<ProgressContext> body) =>
        AnsiConsole.Progress().AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(body);

    private static MiniTrellisModels LoadTeachers(string folder)
    {
        var m = MiniTrellisModels.Load(folder);
        foreach (var net in new TorchSharp.torch.nn.Module[] { m.StructureEncoder, m.StructureDecoder, m.StructureFlow, m.LatentEncoder, m.GaussianDecoder, m.LatentFlow })
        {
            net.eval();
            foreach (var p in net.parameters()) p.requires_grad = false;
        }
        return m;
    }

    private static FlowData EncodeData(MiniTrellisModels m, int shapes, CancellationToken ct)
    {
        FlowData? data = null;
        Progress(ctx =>
        {
            var t = ctx.AddTask("encoding training shapes (VAE means)", maxValue: shapes);
            data = FlowData.Build(m, shapes, computeNormalization: false, new InlineProgress<(int Done, int Total)>(p => t.Value = p.Done), ct);
        });
        return data!;
    }

    /// <summary>Evaluates every schedule (same seeds and classes), printing a progress bar per schedule.</summary>
    public static List<(Schedule Schedule, GeneratedSet Set, ResultRow Row)> EvaluateAll(MiniTrellisModels m, Evaluator ev, IReadOnlyList<Schedule> schedules, CancellationToken ct)
    {
        var results = new List<(Schedule, GeneratedSet, ResultRow)>();
        // Warm-up (JIT, allocator) so that the first timed schedule is not penalised.
        var warm = new Evaluator(1);
        warm.Generate(m, schedules[^1], 1, null, ct);
        Progress(ctx =>
        {
            foreach (var s in schedules)
            {
                var total = s.Steps[0] + s.Steps[1];
                var task = ctx.AddTask(Markup.Escape($"sampling {s.Label}"), maxValue: total);
                var prog = new InlineProgress<TrellisProgress>(p =>
                {
                    if (p.Stage == TrellisStage.SparseStructure) task.Value = p.Step;
                    else if (p.Stage == TrellisStage.StructuredLatent) task.Value = s.Steps[0] + p.Step;
                });
                var set = ev.Generate(m, s, seed: 2026, prog, ct);
                task.Value = total;
                results.Add((s, set, ev.Score(s, set)));
            }
        });
        return results;
    }

    private static int MainJob(string outDir, string modelDir, JobBudget budget, bool saveSamples, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(outDir);
        AnsiConsole.MarkupLine($"[bold]MiniTrellis[/]: miniature two-stage TRELLIS ({ShapeDistribution.ClassCount} shape classes, {ShapeDistribution.Resolution}³ voxels), MDT-dist students, 3D metrics");
        AnsiConsole.MarkupLine($"teachers: {Markup.Escape(Path.GetFullPath(modelDir))}; output: [bold]{Markup.Escape(Path.GetFullPath(outDir))}[/]; libtorch threads: {torch.get_num_threads()}");
        var m = LoadTeachers(modelDir);
        double w = MiniTrellisModels.TeacherGuidance;
        using var data = EncodeData(m, budget.DataShapes, ct);
        var (s1, s2, distillSeconds) = DistilBoth(m, data, budget, DistillationSettings(w), Path.Combine(outDir, "distill"), "MDT-dist (VM + VD)", ct);

        var ev = new Evaluator(budget.PerClass);
        var schedules = new List<Schedule>
        {
            new("teacher [25, 25]", "teacher", m.StructureFlow, m.LatentFlow, Schedule.Teacher(25, w), Schedule.Teacher(25, w)),
            new("teacher [2, 2]", "teacher", m.StructureFlow, m.LatentFlow, Schedule.Teacher(2, w), Schedule.Teacher(2, w)),
            new("teacher [1, 1]", "teacher", m.StructureFlow, m.LatentFlow, Schedule.Teacher(1, w), Schedule.Teacher(1, w)),
            new("student [2, 2]", "student", s1, s2, StageSampler.Student(2), StageSampler.Student(2)),
            new("student [1, 1]", "student", s1, s2, StageSampler.Student(1), StageSampler.Student(1)),
        };
        var results = EvaluateAll(m, ev, schedules, ct);
        var floor = ev.FloorRow();

        PrintTable(results.Select(r => r.Row).ToList(), floor);
        var report = new ResultsFile(results.Select(r => ResultsFile.RowOf(r.Row)).ToList(),
            new FloorEntry(floor.Cov, floor.Mmd, floor.Nna, floor.ClassFidelity),
            new DistillationEntry(budget.Stage1Steps, budget.Stage2Steps, distillSeconds),
            new SetupEntry(ShapeDistribution.Resolution, ShapeDistribution.ClassNames.ToArray(), budget.PerClass * ShapeDistribution.ClassCount,
                budget.PerClass * ShapeDistribution.ClassCount, w, torch.get_num_threads(), total.Elapsed.TotalSeconds, Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds));
        var resultsPath = Path.Combine(outDir, "results.json");
        ResultsFile.Write(resultsPath, report);

        // samples.png: rows = schedules, columns = classes (the first seed of each class; the same seed in every row).
        var rows = results.Select(r => (IReadOnlyList<(int[], float[])>)Enumerable.Range(0, ShapeDistribution.ClassCount)
            .Select(c => (r.Set.Voxels[c * budget.PerClass], r.Set.Colors[c * budget.PerClass])).ToList()).ToList();
        rows.Insert(0, Enumerable.Range(0, ShapeDistribution.ClassCount).Select(c => (ev.Reference[c * budget.PerClass].Voxels, ev.Reference[c * budget.PerClass].Colors)).ToList());
        using (var img = VoxelRenderer.Grid(rows))
        {
            var png = Path.Combine(outDir, "samples.png");
            var tmp = png + ".tmp.png";
            using (var fs = File.Create(tmp)) img.Save(fs, new SixLabors.ImageSharp.Formats.Png.PngEncoder());
            File.Move(tmp, png, overwrite: true);
        }
        WriteGaussianPlys(m, s1, s2, Path.Combine(outDir, "ply"), ct);
        if (saveSamples) SaveSamples(outDir, results, ev);
        total.Stop();
        AnsiConsole.MarkupLine($"distillation: {budget.Stage1Steps} + {budget.Stage2Steps} steps in {distillSeconds:F1} s; total {total.Elapsed.TotalSeconds:F1} s wall, {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F1} s CPU");
        AnsiConsole.MarkupLine($"wrote [bold]{Markup.Escape(resultsPath)}[/], samples.png and ply/ in {Markup.Escape(Path.GetFullPath(outDir))}");
        return 0;
    }

    private static void WriteGaussianPlys(MiniTrellisModels m, SparseStructureFlowModel s1, SLatFlowModel s2, string dir, CancellationToken ct)
    {
        Directory.CreateDirectory(dir);
        var classes = Enumerable.Range(0, ShapeDistribution.ClassCount).ToArray();
        var pipe = new TrellisPipeline(s1, m.StructureDecoder, s2, m.GaussianDecoder, m.Normalization, StageSampler.Student(1), StageSampler.Student(1));
        using var cond = ClassCondition.Tokens(classes);
        using var run = pipe.Run(cond, new TrellisRunOptions { Seed = 7, NumSamples = classes.Length, CancellationToken = ct });
        foreach (var s in run.Samples)
            if (s.Gaussians is { } g)
                GaussianPly.Save(Path.Combine(dir, $"student_1step_{ShapeDistribution.ClassNames[s.Index]}.ply"), g);
    }

    private static void SaveSamples(string outDir, List<(Schedule Schedule, GeneratedSet Set, ResultRow Row)> results, Evaluator ev)
    {
        var root = Path.Combine(outDir, "samples");
        var refDir = Path.Combine(root, "reference");
        Directory.CreateDirectory(refDir);
        for (int i = 0; i < ev.Reference.Count; i++)
            PointPly.Save(Path.Combine(refDir, $"{i:D3}_{ShapeDistribution.ClassNames[ev.Reference[i].Class]}.ply"), ev.Reference[i].Voxels, ev.Reference[i].Colors);
        foreach (var (s, set, _) in results)
        {
            var dir = Path.Combine(root, s.Model + "_" + string.Join("_", s.Steps));
            Directory.CreateDirectory(dir);
            for (int i = 0; i < set.Voxels.Length; i++)
                PointPly.Save(Path.Combine(dir, $"{i:D3}_{ShapeDistribution.ClassNames[set.Classes[i]]}.ply"), set.Voxels[i], set.Colors[i]);
        }
    }

    /// <summary>Prints the results table.</summary>
    public static void PrintTable(IReadOnlyList<ResultRow> rows, ResultRow? floor)
    {
        var t = new Table().Border(TableBorder.Rounded);
        foreach (var h in new[] { "schedule", "steps", "evals", "s/sample (st1+st2)", "COV ↑", "MMD ↓", "1-NNA →0.5", "class fid. ↑", "colour err ↓", "empty" })
            t.AddColumn(h);
        foreach (var r in rows)
            t.AddRow(Markup.Escape(r.Label), $"{r.Steps[0]}+{r.Steps[1]}", $"{r.Evaluations[0]}+{r.Evaluations[1]}",
                $"{r.SecondsPerSample:F4} ({r.Stage1SecondsPerSample:F4}+{r.Stage2SecondsPerSample:F4})",
                $"{r.Cov:F3}", $"{r.Mmd * 1000:F2}e-3", $"{r.Nna:F3}", $"{r.ClassFidelity:F3}", $"{r.AppearanceError:F4}", r.EmptySamples.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (floor is not null)
            t.AddRow("data vs data (floor)", "", "", "", $"{floor.Cov:F3}", $"{floor.Mmd * 1000:F2}e-3", $"{floor.Nna:F3}", $"{floor.ClassFidelity:F3}", $"{floor.AppearanceError:F4}", "");
        AnsiConsole.Write(t);
    }

    private static int Ablation(string outDir, string modelDir, JobBudget budget, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(outDir);
        var m = LoadTeachers(modelDir);
        double w = MiniTrellisModels.TeacherGuidance;
        using var data = EncodeData(m, budget.DataShapes, ct);
        var baseSettings = DistillationSettings(w);
        var variants = new (string Name, MdtDistSettings Settings)[]
        {
            ("VM only", baseSettings with { LambdaVd = 0 }),
            ("VD only", baseSettings with { LambdaVm = 0 }),
            ("VM + VD", baseSettings),
            ("CM baseline", baseSettings with { Mode = DistillationMode.ConsistencyModel, LambdaVd = 0 }),
            ("continuous VM", baseSettings with { Mode = DistillationMode.Continuous, LambdaVd = 0 }),
        };
        var ev = new Evaluator(budget.PerClass);
        var schedules = new List<Schedule> { new("teacher [25, 25]", "teacher", m.StructureFlow, m.LatentFlow, Schedule.Teacher(25, w), Schedule.Teacher(25, w)) };
        var distillSeconds = new Dictionary<string, double>();
        foreach (var (name, settings) in variants)
        {
            var dirName = name.Replace(" ", "", StringComparison.Ordinal).Replace("+", "_", StringComparison.Ordinal);
            var (s1, s2, secs) = DistilBoth(m, data, budget, settings, Path.Combine(outDir, "distill", dirName), name, ct);
            distillSeconds[name] = secs;
            schedules.Add(new($"{name} [2, 2]", "student", s1, s2, StageSampler.Student(2), StageSampler.Student(2)));
            schedules.Add(new($"{name} [1, 1]", "student", s1, s2, StageSampler.Student(1), StageSampler.Student(1)));
        }
        var results = EvaluateAll(m, ev, schedules, ct);
        var floor = ev.FloorRow();
        PrintTable(results.Select(r => r.Row).ToList(), floor);
        var report = new ResultsFile(results.Select(r => ResultsFile.RowOf(r.Row)).ToList(),
            new FloorEntry(floor.Cov, floor.Mmd, floor.Nna, floor.ClassFidelity),
            new DistillationEntry(budget.Stage1Steps, budget.Stage2Steps, distillSeconds.Values.Sum()),
            new SetupEntry(ShapeDistribution.Resolution, ShapeDistribution.ClassNames.ToArray(), budget.PerClass * ShapeDistribution.ClassCount,
                budget.PerClass * ShapeDistribution.ClassCount, w, torch.get_num_threads(), total.Elapsed.TotalSeconds, Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds));
        ResultsFile.Write(Path.Combine(outDir, "ablation.json"), report);
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "ablation.json"))}; total {total.Elapsed.TotalSeconds:F1} s");
        return 0;
    }
}

/// <summary>Runs a flow network in another dtype: the latent and the condition are cast in, the velocity cast back.</summary>
public sealed class CastingFlowNetwork(IFlowNetwork inner, ScalarType dtype) : IFlowNetwork
{
    /// <inheritdoc />
    public nn.Module Module => inner.Module;

    /// <inheritdoc />
    public Tensor Velocity(MdtDist.Core.Flow.Latent x, Tensor t, Tensor? condition)
    {
        using var scope = torch.NewDisposeScope();
        var v = inner.Velocity(x.With(x.Data.to(dtype)), t.to(dtype), condition?.to(dtype));
        return v.to(x.Data.dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>Reports synchronously on the calling thread (<see cref="Progress{T}"/> would post to the thread pool).</summary>
public sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    /// <inheritdoc />
    public void Report(T value) => report(value);
}
