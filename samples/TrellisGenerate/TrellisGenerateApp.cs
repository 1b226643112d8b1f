using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MdtDist.Samples;
using MdtDist.Trellis.Export;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Rendering;
using MdtDist.Trellis.Representations;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisGenerate;

/// <summary>What one run of the sample is given (the command line, parsed).</summary>
public sealed record GenerateOptions
{
    /// <summary>A TRELLIS model folder as released (pipeline.json + ckpts/); null with <see cref="RandomTiny"/>.</summary>
    public string? ModelDir { get; init; }

    /// <summary>Tiny random networks instead of a model folder (a smoke test; no download).</summary>
    public bool RandomTiny { get; init; }

    /// <summary>Pictures of one object (several: views combined by <see cref="MultiImage"/>).</summary>
    public IReadOnlyList<string> Images { get; init; } = Array.Empty<string>();

    /// <summary>Prompts for a TRELLIS-text folder; each gets <see cref="Samples"/> samples.</summary>
    public IReadOnlyList<string> Prompts { get; init; } = Array.Empty<string>();

    /// <summary>How several views combine.</summary>
    public MultiImageMode MultiImage { get; init; } = MultiImageMode.Stochastic;

    /// <summary>DINOv2 weights (default: the usual search).</summary>
    public string? Dinov2 { get; init; }

    /// <summary>An ONNX background-removal model for pictures without transparency.</summary>
    public string? Matting { get; init; }

    /// <summary>An MDT-dist stage-1 student: checkpoint stem or training run folder.</summary>
    public string? StructureStudent { get; init; }

    /// <summary>An MDT-dist stage-2 student: checkpoint stem or training run folder.</summary>
    public string? LatentStudent { get; init; }

    /// <summary>Stage-1 steps (default: pipeline.json, or 1 with a student).</summary>
    public int? StructureSteps { get; init; }

    /// <summary>Stage-2 steps (default: pipeline.json, or 1 with a student).</summary>
    public int? LatentSteps { get; init; }

    /// <summary>Guidance strength of both stages (default: pipeline.json; students 0).</summary>
    public double? Cfg { get; init; }

    /// <summary>Noise seed.</summary>
    public long Seed { get; init; } = 1;

    /// <summary>Samples per picture set or per prompt.</summary>
    public int Samples { get; init; } = 1;

    /// <summary>cpu or cuda[:i].</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>Output prefix: PREFIX_i.ply, PREFIX_i.glb, previews.</summary>
    public string Out { get; init; } = "trellis";

    /// <summary>Whether to decode meshes and write .glb files.</summary>
    public bool Glb { get; init; } = true;

    /// <summary>Fraction of the mesh's triangles removed before writing the .glb, in [0, 1).</summary>
    public double Simplify { get; init; }

    /// <summary>Side of the preview stills (0: none).</summary>
    public int PreviewSize { get; init; } = 256;

    /// <summary>Frames of the turntable GIF (0: none).</summary>
    public int TurntableFrames { get; init; } = 36;
}

/// <summary>
/// The whole TRELLIS pipeline in .NET: pictures (DINOv2) or prompts (CLIP) → stage 1 → structure decoder → stage 2 →
/// Gaussian and mesh decoders → one 3D Gaussian splatting .ply, one .glb mesh and previews per sample, with the
/// teacher's schedule or MDT-dist students with 1–2 steps.
/// </summary>
public static class TrellisGenerateApp
{
    /// <summary>What the sample does and what to download (the head of its help).</summary>
    public const string Description = """
        TrellisGenerate: run TRELLIS (both stages + decoders) and write 3D Gaussian splatting .ply files, .glb meshes and previews.

        usage: TrellisGenerate MODEL_DIR --image FILE [options]        (TRELLIS-image-large: a picture to 3D)
               TrellisGenerate MODEL_DIR --text PROMPT [options]       (TRELLIS-text-base/large/xlarge: a prompt to 3D)
               TrellisGenerate --random-tiny [--image FILE] [options]  (tiny random networks, no download; a smoke test)

        MODEL_DIR is a TRELLIS model folder as released (pipeline.json + ckpts/), e.g.
          huggingface-cli download JeffreyXiang/TRELLIS-image-large --local-dir TRELLIS-image-large
        A TRELLIS-text folder also needs TRELLIS-image-large (its decoders) and openai/clip-vit-large-patch14 beside it
        (see docs/text-conditioning.md).
        """;

    /// <summary>
    /// Command-line entry point; returns the exit code: 0 done, 1 an unknown option or a bad value (System.CommandLine's
    /// message) or nothing to run (the help is printed), 3 a missing or malformed input, 4 every sample empty.
    /// </summary>
    public static int Run(string[] args, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(log);
        var modelDir = SampleCommandLine.OptionalPath("MODEL_DIR", "a TRELLIS model folder as released (pipeline.json + ckpts/)");
        var tiny = new Option<bool>("--random-tiny") { Description = "tiny random networks of TRELLIS's architecture, no download (a smoke test)" };
        var image = new Option<string[]>("--image") { Description = "the picture to lift to 3D (PNG/JPEG/...; RGBA with a transparent background, or any picture with --matting); repeat it for several views of one object" };
        var text = new Option<string[]>("--text") { Description = "a prompt for a TRELLIS-text folder; repeat it for several objects (--samples each)", HelpName = "PROMPT" };
        var multi = new Option<string>("--multi-image") { Description = "how several --image views combine", DefaultValueFactory = _ => "stochastic" };
        multi.AcceptOnlyFromAmong("stochastic", "multidiffusion");
        var dinov2 = new Option<string?>("--dinov2") { Description = "DINOv2 weights (dinov2_vitl14_reg4_pretrain.pth or .safetensors); default: $MDTDIST_DINOV2, then ~/.cache/torch/hub/checkpoints/, then MODEL_DIR/dinov2_vitl14_reg4_pretrain.pth" };
        var matting = new Option<string?>("--matting") { Description = "an ONNX background-removal model (e.g. rembg's u2net.onnx) for pictures without transparency" };
        var ssStudent = new Option<string?>("--ss-student") { Description = "an MDT-dist stage-1 student: a checkpoint pair (ckpts/NAME without extension) or a training run folder (config.json + ckpts/denoiser_ema*_step*.pt; latest EMA step)" };
        var slatStudent = new Option<string?>("--slat-student") { Description = "an MDT-dist stage-2 student, the same two forms" };
        var ssSteps = SampleCommandLine.Int("--ss-steps", "stage-1 steps (default: pipeline.json, or 1 with --ss-student)", min: 1);
        var slatSteps = SampleCommandLine.Int("--slat-steps", "stage-2 steps (default: pipeline.json, or 1 with --slat-student)", min: 1);
        var cfg = SampleCommandLine.Number("--cfg", "guidance strength of both stages (students default to 0)", v => v >= 0, "a number >= 0");
        var seed = new Option<long>("--seed") { Description = "noise seed", DefaultValueFactory = _ => 1 };
        var samples = SampleCommandLine.Int("--samples", "samples in one batch (per prompt with --text)", min: 1, defaultValue: 1);
        var device = new Option<string>("--device") { Description = "cpu or cuda[:i] (needs a TorchSharp CUDA backend)", DefaultValueFactory = _ => "cpu" };
        var output = new Option<string>("--out") { Description = "output prefix: PREFIX_0.ply, PREFIX_0.glb, PREFIX_1.ply, ...", DefaultValueFactory = _ => "trellis" };
        var noGlb = new Option<bool>("--no-glb") { Description = "skip the mesh decoder and the .glb files" };
        var simplify = SampleCommandLine.Number("--simplify", "remove this fraction of the mesh's triangles before writing the .glb (quadric decimation; TRELLIS's to_glb uses 0.95); default 0 (keep every triangle)",
            v => v >= 0 && v < 1, "a fraction in [0, 1)");
        var previewSize = SampleCommandLine.Int("--preview-size", "side of the preview stills (0: no preview); per sample PREFIX_i_preview.png (labelled views) and PREFIX_i_turntable.gif", min: 0, defaultValue: 256);
        var frames = SampleCommandLine.Int("--turntable-frames", "frames of the turntable GIF (0: none)", min: 0, defaultValue: 36);
        var root = new RootCommand(Description)
        {
            modelDir, tiny, image, text, multi, dinov2, matting, ssStudent, slatStudent, ssSteps, slatSteps, cfg, seed, samples, device, output, noGlb,
            simplify, previewSize, frames,
        };
        root.Validators.Add(r =>
        {
            if (r.GetResult(image) is not null && r.GetResult(text) is not null) r.AddError("--image and --text exclude each other: a model folder is either TRELLIS-image or TRELLIS-text.");
            if (r.GetResult(text) is not null && (r.GetResult(dinov2) ?? r.GetResult(matting)) is { } o) r.AddError($"{((System.CommandLine.Parsing.OptionResult)o).Option.Name} applies to --image only.");
        });
        root.SetAction(pr =>
        {
            var o = new GenerateOptions
            {
                ModelDir = pr.GetValue(modelDir), RandomTiny = pr.GetValue(tiny), Images = pr.GetValue(image) ?? Array.Empty<string>(),
                Prompts = pr.GetValue(text) ?? Array.Empty<string>(),
                MultiImage = pr.GetValue(multi) == "multidiffusion" ? MultiImageMode.MultiDiffusion : MultiImageMode.Stochastic,
                Dinov2 = pr.GetValue(dinov2), Matting = pr.GetValue(matting), StructureStudent = pr.GetValue(ssStudent), LatentStudent = pr.GetValue(slatStudent),
                StructureSteps = pr.GetValue(ssSteps), LatentSteps = pr.GetValue(slatSteps), Cfg = pr.GetValue(cfg), Seed = pr.GetValue(seed),
                Samples = pr.GetValue(samples), Device = pr.GetValue(device)!, Out = pr.GetValue(output)!, Glb = !pr.GetValue(noGlb),
                Simplify = pr.GetValue(simplify) ?? 0, PreviewSize = pr.GetValue(previewSize), TurntableFrames = pr.GetValue(frames),
            };
            if (o.ModelDir is null && !o.RandomTiny)
            {
                SampleCommandLine.PrintHelp(root, log);
                return 1;
            }
            if (!o.RandomTiny && o.Images.Count == 0 && o.Prompts.Count == 0)
            {
                log.WriteLine("error: pass the picture to lift with --image FILE (TRELLIS-image) or a prompt with --text PROMPT (TRELLIS-text).");
                return 1;
            }
            try
            {
                var files = Generate(o, log);
                return files.Count > 0 ? 0 : 4;
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or StateDictMismatchException or ArgumentException or FormatException or KeyNotFoundException or NotSupportedException)
            {
                log.WriteLine($"error: {e.Message}");
                return 3;
            }
        });
        if (args.Length == 0)
        {
            SampleCommandLine.PrintHelp(root, log);
            return 1;
        }
        return SampleCommandLine.Invoke(root, args, log);
    }

    /// <summary>Encodes the pictures or prompts, runs the pipeline and writes the .ply, .glb and preview files; returns their paths.</summary>
    /// <exception cref="ArgumentException">A bad option value or an input that does not fit the model (the message names it).</exception>
    /// <exception cref="FileNotFoundException">A model file, picture or prompt model is missing.</exception>
    public static IReadOnlyList<string> Generate(GenerateOptions o, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(log);
        if (!(o.Simplify >= 0 && o.Simplify < 1)) throw new ArgumentException($"--simplify must lie in [0, 1), found {o.Simplify}.", nameof(o));
        if (o.Samples < 1) throw new ArgumentException($"--samples must be >= 1, found {o.Samples}.", nameof(o));
        if (o.Images.Count > 0 && o.Prompts.Count > 0) throw new ArgumentException("--image and --text exclude each other.", nameof(o));
        if (o.RandomTiny && o.Prompts.Count > 0)
            throw new ArgumentException("--text needs a TRELLIS-text model folder (its CLIP tokenizer and text model); --random-tiny has no text model.", nameof(o));
        var device = torch.device(o.Device);
        var pipeline = o.RandomTiny ? TinyPipeline(device, o.Glb) : TrellisPipeline.FromFolder(o.ModelDir!, ScalarType.Float32, device, loadMeshDecoder: o.Glb);
        if (o.Glb && pipeline.MeshDecoder is null) log.WriteLine("note: pipeline.json names no slat_decoder_mesh; no .glb is written");
        var ssSampler = pipeline.StructureSampler;
        var slatSampler = pipeline.LatentSampler;
        if (o.StructureStudent is { } ssStem)
        {
            pipeline = pipeline.WithStructureFlow(LoadStudent<SparseStructureFlowModel>(ssStem, device));
            ssSampler = StageSampler.Student(1);
        }
        if (o.LatentStudent is { } slatStem)
        {
            pipeline = pipeline.WithLatentFlow(LoadStudent<SLatFlowModel>(slatStem, device));
            slatSampler = StageSampler.Student(1);
        }
        ssSampler = ssSampler with { Steps = o.StructureSteps ?? ssSampler.Steps };
        slatSampler = slatSampler with { Steps = o.LatentSteps ?? slatSampler.Steps };
        if (o.Cfg is { } w)
        {
            ssSampler = ssSampler with { CfgStrength = w };
            slatSampler = slatSampler with { CfgStrength = w };
        }

        var (condition, numSamples, multi, describe) = Condition(o, pipeline, device, log);
        using var owned = new Owned(condition.Cond, condition.NegCond);
        log.WriteLine($"stage 1: {ssSampler.Steps} steps, cfg {ssSampler.CfgStrength} ({ssSampler.Evaluations()} evaluations); " +
                      $"stage 2: {slatSampler.Steps} steps, cfg {slatSampler.CfgStrength} ({slatSampler.Evaluations()} evaluations)");
        var watch = Stopwatch.StartNew();
        TrellisRunOptions RunOptions(IProgress<TrellisProgress> progress) => new()
        {
            Seed = o.Seed, NumSamples = numSamples, StructureSampler = ssSampler, LatentSampler = slatSampler, MultiImage = multi,
            Formats = TrellisFormats.Gaussians | (o.Glb ? TrellisFormats.Mesh : TrellisFormats.None), Progress = progress,
        };
        var console = SampleCommandLine.ConsoleFor(log);
        TrellisOutput? run = null;
        if (SampleCommandLine.CanDrawBars(console))
        {
            SampleCommandLine.Bars(console).Start(ctx =>
            {
                var t1 = ctx.AddTask("stage 1 (sparse structure)", maxValue: ssSampler.Steps);
                var t2 = ctx.AddTask("stage 2 (structured latent)", maxValue: slatSampler.Steps);
                var t3 = ctx.AddTask("decoders", maxValue: 1);
                run = pipeline.Run(condition, RunOptions(new InlineProgress<TrellisProgress>(p =>
                {
                    var task = p.Stage switch { TrellisStage.SparseStructure => t1, TrellisStage.StructuredLatent => t2, TrellisStage.Decoding => t3, _ => null };
                    if (task is null) return;
                    task.MaxValue = p.TotalSteps;
                    task.Value = p.Step;
                })));
                foreach (var t in new[] { t1, t2, t3 }) t.Value = t.MaxValue;
            });
        }
        else
        {
            run = pipeline.Run(condition, RunOptions(new InlineProgress<TrellisProgress>(p =>
            {
                if (p.Stage is TrellisStage.SparseStructure or TrellisStage.StructuredLatent && p.Step == p.TotalSteps) log.WriteLine($"  {p.Stage}: {p.TotalSteps} steps");
            })));
        }
        using var result = run!;
        log.WriteLine($"done in {watch.Elapsed.TotalSeconds:F2} s (stage 1 {result.StructureTime.TotalSeconds:F2} s, structure decoder " +
                      $"{result.DecodeStructureTime.TotalSeconds:F2} s, stage 2 {result.LatentTime.TotalSeconds:F2} s, decoders {result.DecodeTime.TotalSeconds:F2} s)");
        return Write(o, result, describe, log, console);
    }

    /// <summary>The condition of the run: picture tokens, prompt tokens (each prompt repeated for its samples) or, for a bare smoke test, random tokens.</summary>
    private static (TrellisCondition Condition, int NumSamples, MultiImageMode? Multi, Func<int, string> Describe) Condition(GenerateOptions o, TrellisPipeline pipeline, Device device, TextWriter log)
    {
        var watch = Stopwatch.StartNew();
        if (o.Prompts.Count > 0)
        {
            using var clip = ClipTextConditioner.FromPipelineFolder(o.ModelDir!, ScalarType.Float32, device);
            if (clip.Channels != pipeline.ConditionChannels)
                throw new InvalidDataException($"the text model of '{o.ModelDir}' makes {clip.Channels}-wide tokens, the flows take {pipeline.ConditionChannels}.");
            var encoded = clip.Encode(o.Prompts);
            using var perPrompt = encoded.Cond;
            var cond = perPrompt.repeat_interleave(o.Samples, dim: 0);
            log.WriteLine($"condition: {o.Prompts.Count} prompt(s) -> tokens [{string.Join(", ", perPrompt.shape)}] in {watch.Elapsed.TotalSeconds:F2} s; " +
                          $"{o.Samples} sample(s) each; negative: the empty prompt");
            return (new TrellisCondition(cond, encoded.NegCond), o.Prompts.Count * o.Samples, null, i => $"\"{o.Prompts[i / o.Samples]}\"");
        }
        if (o.Images.Count == 0)
        {
            // --random-tiny alone: random tokens stand in for a picture.
            var cond = torch.randn(new long[] { 1, 8, pipeline.ConditionChannels }, generator: new Generator((ulong)o.Seed + 7)).to(device);
            log.WriteLine($"condition: random tokens [{string.Join(", ", cond.shape)}] (no --image)");
            return (TrellisCondition.FromImageFeatures(cond), o.Samples, null, _ => "random tokens");
        }
        using var mattingModel = o.Matting is { } m ? new OnnxMatting(m) : null;
        var preprocess = new ImagePreprocessOptions { Matting = mattingModel };
        using var encoder = o.RandomTiny
            ? new ImageConditionEncoder(TinyDinov2(pipeline.ConditionChannels, device), new ImagePreprocessor(preprocess))
            : ImageConditionEncoder.FromModelFolder(o.ModelDir!, o.Dinov2, ScalarType.Float32, device, preprocess);
        var condition = encoder.Encode(o.Images);
        MultiImageMode? multi = o.Images.Count > 1 ? o.MultiImage : null;
        log.WriteLine($"condition: {o.Images.Count} image(s) -> tokens [{string.Join(", ", condition.Cond.shape)}] in {watch.Elapsed.TotalSeconds:F2} s" +
                      (multi is { } mm ? $"; multi-image mode {mm}" : ""));
        var names = string.Join(" + ", o.Images.Select(Path.GetFileName));
        return (condition, o.Samples, multi, _ => names);
    }

    /// <summary>Writes every non-empty sample's files and prints the summary table.</summary>
    private static List<string> Write(GenerateOptions o, TrellisOutput result, Func<int, string> describe, TextWriter log, IAnsiConsole console)
    {
        var files = new List<string>();
        if (Path.GetDirectoryName(Path.GetFullPath(o.Out + "_0.ply")) is { } folder) Directory.CreateDirectory(folder);
        var table = SampleCommandLine.Table("sample", "condition", "voxels", "Gaussians", "mesh triangles", "files");
        foreach (var s in result.Samples)
        {
            var row = new List<string>();
            if (s.IsEmpty || s.Gaussians is null)
            {
                log.WriteLine($"sample {s.Index}: the structure is empty; nothing written");
                table.AddRow(s.Index.ToString(CultureInfo.InvariantCulture), Markup.Escape(describe(s.Index)), "0", "", "", "(empty)");
                continue;
            }
            var path = $"{o.Out}_{s.Index}.ply";
            GaussianPly.Save(path, s.Gaussians);
            files.Add(path);
            row.Add(path);
            log.WriteLine($"sample {s.Index}: {s.Coords.shape[0]} voxels, {s.Gaussians.Count} Gaussians -> {path}");
            string triangles = "";
            if (s.Mesh is { } mesh)
            {
                var glbPath = $"{o.Out}_{s.Index}.glb";
                long? target = o.Simplify > 0 ? Math.Max(1, (long)Math.Round(mesh.FaceCount * (1 - o.Simplify))) : null;
                MeshGlb.Save(glbPath, mesh, new GlbExportOptions { TargetFaceCount = target });
                files.Add(glbPath);
                row.Add(glbPath);
                triangles = mesh.FaceCount.ToString(CultureInfo.InvariantCulture) + (target is long t ? $" (<= {t} written)" : "");
                log.WriteLine($"sample {s.Index}: mesh with {mesh.VertexCount} vertices, {mesh.FaceCount} triangles" +
                              (target is long tt ? $" (simplified to <= {tt})" : "") + (mesh.IsEmpty ? " (no surface: empty scene)" : "") + $" -> {glbPath}");
            }
            if (o.PreviewSize > 0)
            {
                var previews = Preview.SaveSample($"{o.Out}_{s.Index}", s.Gaussians, mesh: s.Mesh, new SamplePreviewOptions
                {
                    Resolution = o.PreviewSize, TurntableResolution = o.PreviewSize, TurntableFrames = o.TurntableFrames,
                });
                files.AddRange(previews);
                row.Add($"+{previews.Count} preview(s)");
                log.WriteLine($"sample {s.Index}: preview -> {string.Join(", ", previews)}");
            }
            table.AddRow(s.Index.ToString(CultureInfo.InvariantCulture), Markup.Escape(describe(s.Index)), s.Coords.shape[0].ToString(CultureInfo.InvariantCulture),
                s.Gaussians.Count.ToString(CultureInfo.InvariantCulture), triangles, Markup.Escape(string.Join(", ", row.Select(Path.GetFileName))));
        }
        table.Caption($"{result.StructureEvaluations} + {result.LatentEvaluations} flow evaluations");
        console.Write(table);
        return files;
    }

    /// <summary>Tiny random networks of TRELLIS's architecture (<see cref="RandomTinyTrellis"/>, 4³ structure latent, 16³ grid) and a tiny mesh decoder, for a smoke test.</summary>
    private static TrellisPipeline TinyPipeline(Device device, bool mesh)
    {
        var meshDecoder = mesh
            ? RandomTinyTrellis.Randomize((SLatMeshDecoder)TrellisCheckpoint.Build(new TrellisModelConfig("SLatMeshDecoder", System.Text.Json.Nodes.JsonNode.Parse(
                """{"resolution": 16, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"use_color": true}}""")!.AsObject()),
                ScalarType.Float32, device), 5)
            : null;
        var sampler = StageSampler.TrellisImageLarge with { Steps = 12 };
        return new TrellisPipeline(
            (SparseStructureFlowModel)RandomTinyTrellis.Build("sparse_structure_flow_model", 1, ScalarType.Float32, device),
            (SparseStructureDecoder)RandomTinyTrellis.Build("sparse_structure_decoder", 2, ScalarType.Float32, device),
            (SLatFlowModel)RandomTinyTrellis.Build("slat_flow_model", 3, ScalarType.Float32, device),
            (SLatGaussianDecoder)RandomTinyTrellis.Build("slat_decoder_gs", 4, ScalarType.Float32, device),
            structureSampler: sampler, latentSampler: sampler, meshDecoder: meshDecoder);
    }

    /// <summary>A student from a checkpoint pair or from a training run folder (TRELLIS's trainer layout).</summary>
    private static T LoadStudent<T>(string path, Device device) where T : nn.Module =>
        TrainingRunCheckpoint.IsTrainingRun(path)
            ? TrainingRunCheckpoint.Load<T>(path, dtype: ScalarType.Float32, device: device)
            : TrellisCheckpoint.Load<T>(path, ScalarType.Float32, device);

    /// <summary>A tiny random DINOv2 with registers (width = the tiny flows' condition width) for the smoke test.</summary>
    private static Dinov2Model TinyDinov2(long width, Device device) =>
        RandomTinyTrellis.Randomize(new Dinov2Model(new Dinov2Config(width, 1, 2, ImageSize: 28), ScalarType.Float32, device), 5);

    private sealed class Owned(params Tensor[] tensors) : IDisposable
    {
        public void Dispose()
        {
            foreach (var t in tensors) t.Dispose();
        }
    }
}
