using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Data;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace DistillTrellis;

/// <summary>What one distillation run is given.</summary>
public sealed record DistillTrellisOptions
{
    /// <summary>A training config in MDT-dist's layout.</summary>
    public required string Config { get; init; }

    /// <summary>Dataset roots in TRELLIS's toolkit layout.</summary>
    public required IReadOnlyList<string> Data { get; init; }

    /// <summary>The teacher's TRELLIS model folder (pipeline.json + ckpts/).</summary>
    public required string Teacher { get; init; }

    /// <summary>The run folder (state/, ckpts/, samples/, export/).</summary>
    public required string Out { get; init; }

    /// <summary>Overrides <c>max_steps</c>.</summary>
    public long? Steps { get; init; }

    /// <summary>The DINOv2 hub checkpoint (<c>dinov2_vitl14_reg4_pretrain.pth</c>); found by the usual search when null.</summary>
    public string? Dinov2 { get; init; }

    /// <summary>A random DINOv2 as wide as the flows' condition (no download; for smoke tests).</summary>
    public bool RandomTinyDinov2 { get; init; }

    /// <summary>Where encoded condition views are cached (default: <c>Out/features</c>).</summary>
    public string? FeatureCache { get; init; }

    /// <summary>Seed of the data order, the views and the trainer's draws.</summary>
    public long Seed { get; init; }

    /// <summary>
    /// Testing aid (the hidden option <c>--simulate-kill-after-step</c>): once the run has reached this step and written
    /// what that step writes, the process sends SIGKILL to itself (no cleanup, as <c>kill -9</c>).
    /// </summary>
    public long? SimulateKillAfterStep { get; init; }
}

/// <summary>What a run ended with.</summary>
/// <param name="Step">The step reached.</param>
/// <param name="Resumed">Whether it continued an earlier run.</param>
/// <param name="ExportedStudent">The exported student checkpoint stem (<c>NAME.json</c> + <c>NAME.safetensors</c>).</param>
/// <param name="LastLoss">The last step's loss, if a step ran.</param>
public sealed record DistillTrellisResult(long Step, bool Resumed, string ExportedStudent, double? LastLoss);

/// <summary>
/// <c>DistillTrellis --config CONFIG --data ROOT[,ROOT] --teacher MODEL_DIR --out RUN_DIR</c>: distils TRELLIS's stage-1 or
/// stage-2 flow (whichever the config's denoiser is) with MDT-dist from a dataset in TRELLIS's layout, as MDT-dist's own
/// training script does, and resumes exactly after Ctrl-C or a kill.
/// </summary>
public static class DistillTrellisApp
{
    /// <summary>The command line.</summary>
    public static int Main(string[] args)
    {
        var config = new Option<string>("--config") { Description = "training config in MDT-dist's layout (e.g. configs/ss_flow_img_dit_L_16l8_fp16.json)", Required = true };
        var data = new Option<string[]>("--data") { Description = "dataset root(s) in TRELLIS's layout; comma-separated or repeated", Required = true, AllowMultipleArgumentsPerToken = true };
        var teacher = new Option<string>("--teacher") { Description = "the teacher's TRELLIS model folder (pipeline.json + ckpts/)", Required = true };
        var output = new Option<string>("--out") { Description = "run folder: state/ (resumable), ckpts/ (TRELLIS layout), samples/, export/", Required = true };
        var steps = new Option<long?>("--steps") { Description = "override max_steps" };
        var dinov2 = new Option<string?>("--dinov2") { Description = "DINOv2 hub checkpoint (dinov2_vitl14_reg4_pretrain.pth); default: $MDTDIST_DINOV2 or torch.hub's cache" };
        var tiny = new Option<bool>("--random-tiny-dinov2") { Description = "random DINOv2 as wide as the condition (no download; smoke tests only)" };
        var cache = new Option<string?>("--feature-cache") { Description = "folder for cached condition features (default RUN_DIR/features)" };
        var seed = new Option<long>("--seed") { Description = "seed of data order, views and draws", DefaultValueFactory = _ => 0 };
        var kill = new Option<long?>("--simulate-kill-after-step") { Description = "testing: SIGKILL itself after this step's checkpoint", Hidden = true };
        var root = new RootCommand("Distil a TRELLIS flow with MDT-dist from a TRELLIS dataset and an MDT-dist config.")
        {
            config, data, teacher, output, steps, dinov2, tiny, cache, seed, kill,
        };
        root.SetAction(pr =>
        {
            var o = new DistillTrellisOptions
            {
                Config = pr.GetValue(config)!, Data = pr.GetValue(data)!.SelectMany(d => d.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToArray(),
                Teacher = pr.GetValue(teacher)!, Out = pr.GetValue(output)!, Steps = pr.GetValue(steps), Dinov2 = pr.GetValue(dinov2),
                RandomTinyDinov2 = pr.GetValue(tiny), FeatureCache = pr.GetValue(cache), Seed = pr.GetValue(seed),
                SimulateKillAfterStep = pr.GetValue(kill),
            };
            using var cts = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) =>
            {
                if (cts.IsCancellationRequested) return;
                e.Cancel = true;
                cts.Cancel();
                AnsiConsole.MarkupLine("[yellow]Stopping after the current step; the state is saved (run the same command to resume)...[/]");
            };
            using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole(c => c.SingleLine = true).SetMinimumLevel(LogLevel.Information));
            var logger = loggerFactory.CreateLogger("DistillTrellis");
            try
            {
                DistillTrellisResult? result = null;
                AnsiConsole.Progress().AutoClear(false)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("MDT-dist");
                        result = Run(o, new InlineProgress(p =>
                        {
                            task.MaxValue = Math.Max(1, p.TotalSteps);
                            task.Value = p.Step;
                            task.Description = $"MDT-dist step {p.Step} (loss {p.Loss:F4})";
                        }), logger, cts.Token);
                    });
                AnsiConsole.MarkupLine($"[green]done[/] at step {result!.Step}; student: {Markup.Escape(result.ExportedStudent)}.json/.safetensors");
                return 0;
            }
            catch (OperationCanceledException)
            {
                AnsiConsole.MarkupLine("[yellow]Stopped; the state is saved in the run folder.[/]");
                return 130;
            }
            catch (Exception e) when (e is FileNotFoundException or InvalidDataException or ArgumentException or DirectoryNotFoundException or StateDictMismatchException or NotSupportedException)
            {
                AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                return 2;
            }
        });
        return root.Parse(args).Invoke();
    }

    private sealed class InlineProgress(Action<DistillationProgress> report) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress value) => report(value);
    }

    /// <summary>Runs (or resumes) a distillation.</summary>
    /// <exception cref="FileNotFoundException">The config, a dataset root's metadata.csv, the teacher folder or a checkpoint is missing.</exception>
    /// <exception cref="InvalidDataException">The config has an unknown or unsupported key, or a file is malformed.</exception>
    /// <exception cref="OperationCanceledException">Cancelled (the state is saved first).</exception>
    public static DistillTrellisResult Run(DistillTrellisOptions o, IProgress<DistillationProgress>? progress = null, ILogger? logger = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        var log = logger ?? NullLogger.Instance;
        var cfg = TrellisTrainingConfig.Load(o.Config);
        foreach (var i in cfg.Ignored) log.LogWarning("config {Config}: {Key} is accepted without effect", o.Config, i);
        // Everything that can be checked is checked before anything is written or built.
        var dataset = TrellisDataset.Open(o.Data, cfg.Dataset);
        if (dataset.Count == 0) throw new InvalidDataException($"no instance of {string.Join(", ", o.Data)} passes the filters of {cfg.DatasetName}.");
        bool stage1 = cfg.Dataset.Kind == TrellisLatentKind.SparseStructure;
        var teacherStem = TeacherCheckpoint(o.Teacher, cfg, stage1, "teacher");
        var studentStem = cfg.FinetuneCheckpoints.ContainsKey("denoiser") ? TeacherCheckpoint(o.Teacher, cfg, stage1, "denoiser") : teacherStem;

        Directory.CreateDirectory(o.Out);
        var stateDir = Path.Combine(o.Out, "state");
        var ckptDir = Path.Combine(o.Out, "ckpts");
        File.Copy(o.Config, Path.Combine(o.Out, "config.json"), overwrite: true);

        var teacherNet = TrellisCheckpoint.Load(teacherStem);
        var studentNet = TrellisCheckpoint.Build(cfg.Denoiser);
        TrellisCheckpoint.LoadWeights(studentNet, studentStem + ".safetensors");
        IFlowNetwork teacherFlow = Adapt(teacherNet, "teacher"), studentFlow = Adapt(studentNet, "denoiser");
        MdtDistiller.Freeze(teacherFlow);
        // TRELLIS's elastic memory (trainer.args.elastic): the controller steers the student's checkpointed blocks and
        // measures each micro-batch; its fit is kept beside the trainer state (it changes memory use, never results).
        var elastic = cfg.Elastic is null ? null : new LinearMemoryController(cfg.Elastic, seed: (int)(o.Seed & int.MaxValue));
        var elasticState = Path.Combine(stateDir, "elastic_controller.json");
        if (elastic is not null)
        {
            if (studentNet is not IElasticModule elasticStudent)
                throw new InvalidDataException($"{o.Config}: trainer.args.elastic needs an elastic denoiser, {cfg.Denoiser.Name} is not one.");
            if (File.Exists(elasticState))
                elastic.LoadState(elasticState);
            elasticStudent.RegisterMemoryController(elastic);
            log.LogInformation("Elastic memory: {Controller}", elastic);
        }

        Dinov2Model? dino = null;
        if (cfg.Dataset.Condition == TrellisConditionKind.Image)
            dino = LoadDinov2(o, cfg, CondChannels(studentNet), log);
        try
        {
            var source = new TrellisDistillationData(dataset, cfg.BatchSizePerRank, o.Seed,
                dino is null ? null : TrellisDistillationData.EncodeWith(dino), o.FeatureCache ?? Path.Combine(o.Out, "features"));
            var options = cfg.Trainer with
            {
                CheckpointDirectory = stateDir,
                CheckpointEvery = cfg.Trainer.CheckpointEvery > 0 ? cfg.Trainer.CheckpointEvery : 1000,
                Seed = o.Seed,
                BatchSplitter = TrellisDistillationData.Split,
                MicroBatchScope = elastic is null ? null : elastic.Record,
            };
            using var distiller = new MdtDistiller(teacherFlow, studentFlow, MdtDistObjective.Create(cfg.Objective), options, log);
            bool resumed = distiller.TryResume();
            if (resumed) log.LogInformation("Resumed {Out} at step {Step}", o.Out, distiller.Step);
            long maxSteps = o.Steps ?? cfg.MaxSteps;
            double? lastLoss = null;
            var pipeline = cfg.SampleEvery > 0 && File.Exists(Path.Combine(o.Teacher, "pipeline.json")) ? TrellisPipeline.FromFolder(o.Teacher) : null;
            while (distiller.Step < maxSteps)
            {
                long next = Math.Min(maxSteps, NextMultiple(distiller.Step, options.CheckpointEvery, cfg.SampleEvery));
                var last = distiller.Train(source, next, progress, cancellationToken);
                lastLoss = last?.Loss ?? lastLoss;
                if (elastic?.LastLog is { } el)
                {
                    log.LogInformation("Elastic memory at step {Step}: ratio {Ratio:F3} for {Voxels} voxels, peak {Memory:F3} GiB, fit k={K:G4} b={B:G4}",
                        distiller.Step, el.MemRatio, el.InputSize, el.MemoryGiB, el.K, el.B);
                    elastic.SaveState(elasticState);
                }
                if (distiller.Step % options.CheckpointEvery == 0 || distiller.Step == maxSteps)
                    SaveTrellisLayout(distiller, studentNet, ckptDir, options.EmaRates);
                if (pipeline is not null && distiller.Step % cfg.SampleEvery == 0)
                    Snapshot(distiller, cfg.Denoiser, pipeline, source, stage1, Path.Combine(o.Out, "samples"), log);
                if (o.SimulateKillAfterStep is { } killAt && distiller.Step >= killAt)
                {
                    System.Diagnostics.Process.GetCurrentProcess().Kill();
                    Thread.Sleep(Timeout.Infinite);
                }
            }
            var export = Path.Combine(o.Out, "export", "ckpts", stage1 ? "ss_flow_mdt" : "slat_flow_mdt");
            distiller.CopyEmaTo(studentNet);
            TrellisCheckpoint.Save(studentNet, export);
            log.LogInformation("Exported the EMA student to {Export}", export);
            return new DistillTrellisResult(distiller.Step, resumed, export, lastLoss);
        }
        finally
        {
            dino?.Dispose();
        }
    }

    private static long NextMultiple(long step, long a, long b)
    {
        long na = (step / a + 1) * a;
        long nb = b > 0 ? (step / b + 1) * b : long.MaxValue;
        return Math.Min(na, nb);
    }

    /// <summary>
    /// The checkpoint a config's <c>finetune_ckpt.&lt;key&gt;</c> names (e.g. <c>JeffreyXiang/TRELLIS-image-large/ckpts/ss_flow_img_dit_L_16l8_fp16</c>),
    /// looked up in the teacher folder (its <c>ckpts/NAME</c> tail), or the teacher folder's own stage flow from pipeline.json.
    /// </summary>
    private static string TeacherCheckpoint(string teacherFolder, TrellisTrainingConfig cfg, bool stage1, string key)
    {
        if (!Directory.Exists(teacherFolder)) throw new DirectoryNotFoundException($"the teacher folder '{teacherFolder}' does not exist.");
        var tried = new List<string>();
        if (cfg.FinetuneCheckpoints.TryGetValue(key, out var reference))
        {
            var parts = reference.Split('/');
            tried.Add(Path.Combine(teacherFolder, Path.Combine(parts)));
            if (parts.Length >= 3) tried.Add(Path.Combine(teacherFolder, Path.Combine(parts[2..])));
        }
        else
        {
            var pj = Path.Combine(teacherFolder, "pipeline.json");
            if (!File.Exists(pj)) throw new FileNotFoundException($"'{teacherFolder}' has no pipeline.json and the config names no finetune_ckpt.{key}.", pj);
            var models = TrellisPipelineConfig.Read(pj).Models;   // validated: required models present, paths inside the folder
            tried.Add(Path.Combine(teacherFolder, models[stage1 ? "sparse_structure_flow_model" : "slat_flow_model"]));
        }
        foreach (var t in tried)
            if (File.Exists(t + ".json")) return t;
        throw new FileNotFoundException($"the {key} checkpoint was not found; tried {string.Join(", ", tried.Select(t => $"'{t}.json'"))}.", tried[0] + ".json");
    }

    private static IFlowNetwork Adapt(nn.Module net, string role) => net switch
    {
        SparseStructureFlowModel ss => new SparseStructureFlowAdapter(ss),
        SLatFlowModel slat => new SLatFlowAdapter(slat),
        _ => throw new InvalidDataException($"the {role} is a {net.GetType().Name}, not a TRELLIS flow (SparseStructureFlowModel, SLatFlowModel, ElasticSLatFlowModel)."),
    };

    private static long CondChannels(nn.Module net) => net switch
    {
        SparseStructureFlowModel ss => ss.Config.CondChannels,
        SLatFlowModel slat => slat.Config.CondChannels,
        _ => throw new InvalidOperationException(),
    };

    private static Dinov2Model LoadDinov2(DistillTrellisOptions o, TrellisTrainingConfig cfg, long condChannels, ILogger log)
    {
        if (o.RandomTinyDinov2)
        {
            long heads = condChannels % 4 == 0 ? 4 : 1;
            var m = new Dinov2Model(new Dinov2Config(condChannels, 1, heads, ImageSize: cfg.Dataset.ImageSize));
            var g = new Generator(1234);
            using (torch.no_grad())
                foreach (var (_, p) in m.named_parameters()) p.copy_(torch.randn(p.shape, generator: g) * 0.1);
            m.eval();
            log.LogWarning("Using a RANDOM DINOv2 of width {Width}: a smoke test, not a real distillation.", condChannels);
            return m;
        }
        var path = o.Dinov2 ?? Dinov2Checkpoint.DefaultPath(o.Teacher);
        var model = Dinov2Checkpoint.Load(path);
        if (model.Config.EmbedDim != condChannels)
        {
            model.Dispose();
            throw new InvalidDataException($"DINOv2 '{path}' makes {model.Config.EmbedDim}-wide tokens, the flows take {condChannels}.");
        }
        model.eval();
        return model;
    }

    /// <summary>The student and its EMAs in TRELLIS's training layout: <c>ckpts/denoiser_stepNNNNNNN</c> and
    /// <c>ckpts/denoiser_ema&lt;rate&gt;_stepNNNNNNN</c> (<c>.json</c> + <c>.safetensors</c> for the <c>.pt</c> TRELLIS writes).</summary>
    private static void SaveTrellisLayout(MdtDistiller distiller, nn.Module studentNet, string ckptDir, IReadOnlyList<double> emaRates)
    {
        var step = distiller.Step.ToString("D7", CultureInfo.InvariantCulture);
        TrellisCheckpoint.Save(studentNet, Path.Combine(ckptDir, $"denoiser_step{step}"));
        var backup = studentNet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        try
        {
            for (int i = 0; i < emaRates.Count; i++)
            {
                distiller.CopyEmaTo(studentNet, i);
                TrellisCheckpoint.Save(studentNet, Path.Combine(ckptDir, $"denoiser_ema{emaRates[i].ToString(CultureInfo.InvariantCulture)}_step{step}"));
            }
        }
        finally
        {
            using (torch.no_grad())
                foreach (var (k, v) in studentNet.state_dict()) v.copy_(backup[k]);
            foreach (var t in backup.Values) t.Dispose();
        }
    }

    /// <summary>A sample snapshot: the teacher's pipeline with the EMA student at one step on the first batch's conditions, as Gaussian .ply files.</summary>
    private static void Snapshot(MdtDistiller distiller, TrellisModelConfig denoiser, TrellisPipeline pipeline, TrellisDistillationData data, bool stage1, string dir, ILogger log)
    {
        using var scope = torch.NewDisposeScope();
        var batch = data.GetBatch(0);
        if (batch.Condition is null) return;
        var student = TrellisCheckpoint.Build(denoiser);
        distiller.CopyEmaTo(student);
        var p = stage1
            ? pipeline.WithStructureFlow((SparseStructureFlowModel)student, StageSampler.Student(1))
            : pipeline.WithLatentFlow((SLatFlowModel)student, StageSampler.Student(1));
        using var r = p.Run(new TrellisCondition(batch.Condition.narrow(0, 0, 1), batch.NegativeCondition!), new TrellisRunOptions { Seed = 3407 });
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, $"step{distiller.Step:D7}.ply");
        if (r.Samples[0].Gaussians is { } g) { GaussianPly.Save(path, g); log.LogInformation("Snapshot {Path}", path); }
        else log.LogInformation("Snapshot at step {Step}: the sample is empty", distiller.Step);
        student.Dispose();
    }
}
