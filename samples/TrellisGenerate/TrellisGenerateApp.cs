using System.Diagnostics;
using System.CommandLine;
using System.Globalization;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisGenerate;

/// <summary>
/// The whole TRELLIS pipeline in .NET: condition tokens → stage 1 → structure decoder → stage 2 → Gaussian decoder →
/// one 3D Gaussian splatting .ply per sample, with the teacher's 25-step schedule or MDT-dist students with 1–2 steps.
/// </summary>
public static class TrellisGenerateApp
{
    /// <summary>How to call the sample.</summary>
    public const string Usage = """
        TrellisGenerate: run TRELLIS (both stages + Gaussian decoder) and write 3D Gaussian splatting .ply files.

        usage: TrellisGenerate MODEL_DIR [options]
               TrellisGenerate --random-tiny [options]     (tiny random networks, no download; a smoke test)

        MODEL_DIR is a TRELLIS-image-large folder as released (pipeline.json + ckpts/), e.g.
          huggingface-cli download JeffreyXiang/TRELLIS-image-large --local-dir TRELLIS-image-large

        Options: TrellisGenerate --help.
        """;

    private static readonly Argument<string?> ModelDir = new("MODEL_DIR")
    {
        Description = "a TRELLIS-image-large folder as released (pipeline.json + ckpts/)", Arity = ArgumentArity.ZeroOrOne,
    };
    private static readonly Option<bool> RandomTiny = new("--random-tiny") { Description = "tiny random networks, no download (a smoke test)" };
    private static readonly Option<string?> Cond = new("--cond") { Description = "condition tokens [1 or B, L, 1024] in a .safetensors file (the first tensor); default all zeros" };
    private static readonly Option<string?> SsStudent = new("--ss-student") { Description = "an MDT-dist stage-1 student checkpoint (ckpts/NAME without extension)" };
    private static readonly Option<string?> SlatStudent = new("--slat-student") { Description = "an MDT-dist stage-2 student checkpoint" };
    private static readonly Option<int?> SsSteps = new("--ss-steps") { Description = "stage-1 steps (default: pipeline.json, or 1 with --ss-student)" };
    private static readonly Option<int?> SlatSteps = new("--slat-steps") { Description = "stage-2 steps (default: pipeline.json, or 1 with --slat-student)" };
    private static readonly Option<double?> Cfg = new("--cfg") { Description = "guidance strength of both stages (students default to 0)" };
    private static readonly Option<long> Seed = new("--seed") { Description = "noise seed", DefaultValueFactory = _ => 1 };
    private static readonly Option<int> Samples = new("--samples") { Description = "samples in one batch", DefaultValueFactory = _ => 1 };
    private static readonly Option<string> DeviceName = new("--device") { Description = "cpu or cuda[:i] (needs a TorchSharp CUDA backend)", DefaultValueFactory = _ => "cpu" };
    private static readonly Option<string> Out = new("--out") { Description = "output prefix: PREFIX_0.ply, PREFIX_1.ply, ...", DefaultValueFactory = _ => "trellis" };

    /// <summary>The command line (System.CommandLine).</summary>
    public static RootCommand Command()
    {
        var root = new RootCommand(Usage);
        root.Arguments.Add(ModelDir);
        foreach (var o in new Option[] { RandomTiny, Cond, SsStudent, SlatStudent, SsSteps, SlatSteps, Cfg, Seed, Samples, DeviceName, Out }) root.Options.Add(o);
        return root;
    }

    /// <summary>Command-line entry point; returns the exit code (0 written, 1 usage, 3 bad input, 4 nothing written).</summary>
    public static int Run(string[] args, TextWriter log)
    {
        var root = Command();
        root.SetAction(parse =>
        {
            var modelDir = parse.GetValue(ModelDir);
            bool tiny = parse.GetValue(RandomTiny);
            if (modelDir is null && !tiny) { log.WriteLine(Usage); return 1; }
            try
            {
                var files = Generate(modelDir, tiny, parse, log);
                return files.Count > 0 ? 0 : 4;
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or StateDictMismatchException or ArgumentException or FormatException or KeyNotFoundException)
            {
                log.WriteLine($"error: {e.Message}");
                return 3;
            }
        });
        return root.Parse(args).Invoke(new InvocationConfiguration { Output = log, Error = log });
    }

    private static IReadOnlyList<string> Generate(string? modelDir, bool tiny, ParseResult o, TextWriter log)
    {
        var device = torch.device(o.GetValue(DeviceName)!);
        var pipeline = tiny
            ? RandomTinyTrellis.Create(ScalarType.Float32, seed: 1, device, StageSampler.TrellisImageLarge with { Steps = 12 }, StageSampler.TrellisImageLarge with { Steps = 12 })
            : TrellisPipeline.FromFolder(modelDir!, ScalarType.Float32, device);
        var ssSampler = pipeline.StructureSampler;
        var slatSampler = pipeline.LatentSampler;
        if (o.GetValue(SsStudent) is { } ssStem)
        {
            pipeline = pipeline.WithStructureFlow(TrellisCheckpoint.Load<SparseStructureFlowModel>(ssStem, ScalarType.Float32, device));
            ssSampler = StageSampler.Student(1);
        }
        if (o.GetValue(SlatStudent) is { } slatStem)
        {
            pipeline = pipeline.WithLatentFlow(TrellisCheckpoint.Load<SLatFlowModel>(slatStem, ScalarType.Float32, device));
            slatSampler = StageSampler.Student(1);
        }
        ssSampler = ssSampler with { Steps = o.GetValue(SsSteps) ?? ssSampler.Steps };
        slatSampler = slatSampler with { Steps = o.GetValue(SlatSteps) ?? slatSampler.Steps };
        if (o.GetValue(Cfg) is { } w)
        {
            ssSampler = ssSampler with { CfgStrength = w };
            slatSampler = slatSampler with { CfgStrength = w };
        }
        Tensor cond;
        if (o.GetValue(Cond) is { } condFile)
        {
            var tensors = SafeTensors.Load(condFile, ScalarType.Float32, device);
            cond = tensors.Count > 0 ? tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).First().Value
                                     : throw new InvalidDataException($"'{condFile}' holds no tensor.");
        }
        else cond = torch.zeros(new long[] { 1, tiny ? 6 : 1374, pipeline.ConditionChannels }, device: device);

        log.WriteLine($"stage 1: {ssSampler.Steps} steps, cfg {ssSampler.CfgStrength} ({ssSampler.Evaluations()} evaluations); " +
                      $"stage 2: {slatSampler.Steps} steps, cfg {slatSampler.CfgStrength} ({slatSampler.Evaluations()} evaluations)");
        var options = new TrellisRunOptions
        {
            Seed = o.GetValue(Seed), NumSamples = o.GetValue(Samples), StructureSampler = ssSampler, LatentSampler = slatSampler,
        };
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(log) });
        var watch = Stopwatch.StartNew();
        using var result = RunWithProgress(pipeline, cond, options, console, live: ReferenceEquals(log, Console.Out) && !Console.IsOutputRedirected);

        var table = new Table().AddColumn("stage").AddColumn(new TableColumn("evaluations").RightAligned()).AddColumn(new TableColumn("seconds").RightAligned());
        table.AddRow("sparse structure", result.StructureEvaluations.ToString(CultureInfo.InvariantCulture), Seconds(result.StructureTime));
        table.AddRow("structure decoder", "1", Seconds(result.DecodeStructureTime));
        table.AddRow("structured latent", result.LatentEvaluations.ToString(CultureInfo.InvariantCulture), Seconds(result.LatentTime));
        table.AddRow("Gaussian decoder", "1", Seconds(result.DecodeTime));
        table.AddRow("total", "", Seconds(watch.Elapsed));
        console.Write(table);

        var prefix = o.GetValue(Out)!;
        var files = new List<string>();
        foreach (var s in result.Samples)
        {
            if (s.IsEmpty || s.Gaussians is null)
            {
                log.WriteLine($"sample {s.Index}: the structure is empty; nothing written");
                continue;
            }
            var path = $"{prefix}_{s.Index}.ply";
            GaussianPly.Save(path, s.Gaussians);
            files.Add(path);
            log.WriteLine($"sample {s.Index}: {s.Coords.shape[0]} voxels, {s.Gaussians.Count} Gaussians -> {path}");
        }
        return files;
    }

    private static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture);

    /// <summary>Runs the pipeline with Spectre.Console progress bars on an interactive console, plain lines otherwise.</summary>
    private static TrellisOutput RunWithProgress(TrellisPipeline pipeline, Tensor cond, TrellisRunOptions options, IAnsiConsole console, bool live)
    {
        if (!live)
        {
            var plain = new Inline(p =>
            {
                if (p.Stage is (TrellisStage.SparseStructure or TrellisStage.StructuredLatent) && p.Step == p.TotalSteps)
                    console.WriteLine($"  {p.Stage}: {p.TotalSteps} steps");
            });
            return pipeline.Run(cond, new TrellisRunOptions
            {
                Seed = options.Seed, NumSamples = options.NumSamples, StructureSampler = options.StructureSampler, LatentSampler = options.LatentSampler, Progress = plain,
            });
        }
        TrellisOutput? output = null;
        AnsiConsole.Progress().Start(ctx =>
        {
            var tasks = new Dictionary<TrellisStage, ProgressTask>
            {
                [TrellisStage.SparseStructure] = ctx.AddTask("sparse structure"),
                [TrellisStage.StructureDecoding] = ctx.AddTask("structure decoder"),
                [TrellisStage.StructuredLatent] = ctx.AddTask("structured latent"),
                [TrellisStage.Decoding] = ctx.AddTask("Gaussian decoder"),
            };
            var progress = new Inline(p =>
            {
                var task = tasks[p.Stage];
                task.MaxValue = p.TotalSteps;
                task.Value = p.Step;
            });
            output = pipeline.Run(cond, new TrellisRunOptions
            {
                Seed = options.Seed, NumSamples = options.NumSamples, StructureSampler = options.StructureSampler, LatentSampler = options.LatentSampler, Progress = progress,
            });
            foreach (var t in tasks.Values) t.Value = t.MaxValue;
        });
        return output!;
    }

    private sealed class Inline(Action<TrellisProgress> a) : IProgress<TrellisProgress>
    {
        public void Report(TrellisProgress value) => a(value);
    }
}
