using System.Diagnostics;
using MdtDist.Core.Training;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using MiniTrellis.Model;
using Spectre.Console;

namespace MiniTrellis.Training;

/// <summary>Budgets of <c>train-teachers</c>.</summary>
/// <param name="StructureVaeSteps">Structure-VAE steps.</param>
/// <param name="LatentVaeSteps">Structured-latent VAE steps.</param>
/// <param name="Stage1Steps">Flow-matching steps of the stage-1 teacher.</param>
/// <param name="Stage2Steps">Flow-matching steps of the stage-2 teacher.</param>
/// <param name="Batch1">Stage-1 batch (and structure-VAE batch).</param>
/// <param name="Batch2">Stage-2 batch (and structured-latent VAE batch).</param>
/// <param name="DataShapes">Training shapes encoded for the flows.</param>
public sealed record TeacherBudget(int StructureVaeSteps, int LatentVaeSteps, int Stage1Steps, int Stage2Steps, int Batch1, int Batch2, int DataShapes)
{
    /// <summary>The budget of the shipped teachers.</summary>
    public static TeacherBudget Default { get; } = new(800, 400, 2000, 1200, 16, 8, 1800);

    /// <summary>A smoke-test budget.</summary>
    public static TeacherBudget Quick { get; } = new(3, 3, 3, 3, 4, 2, 18);
}

/// <summary>
/// <c>train-teachers</c>: the structure VAE, the structured-latent VAE, then the two flow-matching teachers with
/// TRELLIS's recipe (<c>FlowMatchingTrainer</c>: logit-normal(1, 1) times, p_uncond 0.1 with zero negative
/// condition, AdamW, EMA, adaptive clipping, checkpoints and resume), written as a TRELLIS model folder.
/// </summary>
public static class TeacherTraining
{
    /// <summary>Trains everything and writes the folder <paramref name="outDir"/>; returns the exit code.</summary>
    public static int Run(string outDir, TeacherBudget budget, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        var m = MiniTrellisModels.CreateFresh(seed: 1);
        var work = Path.Combine(outDir, "training");
        Directory.CreateDirectory(work);
        double iou = 0, colourErr = 0;
        var times = new Dictionary<string, double>();
        var sw = Stopwatch.StartNew();
        var vaeDir = Path.Combine(work, "vae");
        if (File.Exists(Path.Combine(vaeDir, "done.txt")))
        {
            // A finished VAE stage of an earlier run (the flows resume from their own checkpoints).
            foreach (var (net, name) in new (TorchSharp.torch.nn.Module, string)[] { (m.StructureEncoder, "ss_enc"), (m.StructureDecoder, "ss_dec"), (m.LatentEncoder, "slat_enc"), (m.GaussianDecoder, "slat_dec_gs") })
                MdtDist.Trellis.Checkpoints.TrellisCheckpoint.LoadWeights(net, Path.Combine(vaeDir, name + ".safetensors"));
            foreach (var net in new TorchSharp.torch.nn.Module[] { m.StructureEncoder, m.StructureDecoder, m.LatentEncoder, m.GaussianDecoder }) net.eval();
            AnsiConsole.MarkupLine($"VAEs loaded from {Markup.Escape(vaeDir)} (delete it to retrain them)");
        }
        else
        {
            Progress(ctx =>
            {
                var t = ctx.AddTask("structure VAE", maxValue: budget.StructureVaeSteps);
                iou = AutoencoderTraining.TrainStructureVae(m.StructureEncoder, m.StructureDecoder, budget.StructureVaeSteps, budget.Batch1,
                    new InlineProgress<TrainReport>(r => { t.Value = r.Step; t.Description = $"structure VAE (IoU {r.Quality:F3})"; }), ct);
                times["structure_vae"] = sw.Elapsed.TotalSeconds; sw.Restart();
                var t2 = ctx.AddTask("latent VAE", maxValue: budget.LatentVaeSteps);
                colourErr = AutoencoderTraining.TrainLatentVae(m.LatentEncoder, m.GaussianDecoder, budget.LatentVaeSteps, budget.Batch2,
                    new InlineProgress<TrainReport>(r => { t2.Value = r.Step; t2.Description = $"latent VAE (colour err {r.Quality:F3})"; }), ct);
                times["latent_vae"] = sw.Elapsed.TotalSeconds; sw.Restart();
            });
            Directory.CreateDirectory(vaeDir);
            foreach (var (net, name) in new (TorchSharp.torch.nn.Module, string)[] { (m.StructureEncoder, "ss_enc"), (m.StructureDecoder, "ss_dec"), (m.LatentEncoder, "slat_enc"), (m.GaussianDecoder, "slat_dec_gs") })
                MdtDist.Core.IO.SafeTensors.Save(Path.Combine(vaeDir, name + ".safetensors"), net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
            MiniTrellisModels.WriteTextAtomically(Path.Combine(vaeDir, "done.txt"), $"structure VAE IoU {iou}, latent VAE colour error {colourErr}\n");
        }
        FlowData? data = null;
        Progress(ctx =>
        {
            var t = ctx.AddTask("encoding the training shapes", maxValue: budget.DataShapes);
            data = FlowData.Build(m, budget.DataShapes, computeNormalization: true, new InlineProgress<(int Done, int Total)>(p => t.Value = p.Done), ct);
        });
        using var flowData = data!;
        m = new MiniTrellisModels
        {
            StructureEncoder = m.StructureEncoder, StructureDecoder = m.StructureDecoder, StructureFlow = m.StructureFlow,
            LatentEncoder = m.LatentEncoder, GaussianDecoder = m.GaussianDecoder, LatentFlow = m.LatentFlow, Normalization = flowData.Normalization,
        };
        sw.Restart();
        Progress(ctx =>
        {
            var t1 = ctx.AddTask("stage-1 teacher (flow matching)", maxValue: budget.Stage1Steps);
            TrainFlow(new SparseStructureFlowAdapter(m.StructureFlow), s => flowData.StructureBatch(s, budget.Batch1, seed: 11), budget.Stage1Steps,
                Path.Combine(work, "stage1"), t1, "stage-1 teacher", ct);
            times["stage1_flow"] = sw.Elapsed.TotalSeconds; sw.Restart();
            var t2 = ctx.AddTask("stage-2 teacher (flow matching)", maxValue: budget.Stage2Steps);
            TrainFlow(new SLatFlowAdapter(m.LatentFlow), s => flowData.LatentBatch(s, budget.Batch2, seed: 12), budget.Stage2Steps,
                Path.Combine(work, "stage2"), t2, "stage-2 teacher", ct);
            times["stage2_flow"] = sw.Elapsed.TotalSeconds;
        });
        m.Save(outDir, half: false);
        AnsiConsole.MarkupLine($"structure VAE IoU {iou:F3}, latent VAE colour error {colourErr:F4}; times (s): {string.Join(", ", times.Select(kv => $"{kv.Key} {kv.Value:F0}"))}; total {total.Elapsed.TotalSeconds:F0} s");
        AnsiConsole.MarkupLine($"wrote the teachers to [bold]{Markup.Escape(Path.GetFullPath(outDir))}[/] (resumable training state in {Markup.Escape(work)})");
        return 0;
    }

    private static void TrainFlow(IFlowNetwork net, Func<long, DistillationBatch> batch, int steps, string dir, ProgressTask task, string label, CancellationToken ct)
    {
        var options = new FlowMatchingTrainerOptions
        {
            LearningRate = 1e-3, EmaRates = new[] { 0.999 }, Seed = 5, PUncond = 0.1, CheckpointDirectory = dir, CheckpointEvery = 250,
            KeepCheckpoints = 2, LogEvery = 0, Clipping = new GradientClipping(MaxNorm: 1.0),
        };
        using var trainer = new FlowMatchingTrainer(net, options);
        trainer.TryResume();
        trainer.Train(new DelegateDataSource(batch), steps,
            new InlineProgress<TrainingProgress>(p => { task.Value = p.Step; task.Description = $"{label} (loss {p.Loss:F3})"; }), ct);
        trainer.CopyEmaTo(net.Module);
        net.Module.eval();
    }

    private static void Progress(Action<ProgressContext> body) =>
        AnsiConsole.Progress().AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(body);
}
