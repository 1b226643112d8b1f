using System.Diagnostics;
using System.Globalization;
using MdtDist.Core.IO;
using MdtDist.Trellis.Export;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Rendering;
using MdtDist.Trellis.Representations;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisGenerate;

/// <summary>
/// The whole TRELLIS pipeline in .NET: condition tokens → stage 1 → structure decoder → stage 2 → Gaussian and mesh
/// decoders → one 3D Gaussian splatting .ply and one .glb mesh per sample, with the teacher's 25-step schedule or
/// MDT-dist students with 1–2 steps.
/// </summary>
public static class TrellisGenerateApp
{
    /// <summary>How to call the sample.</summary>
    public const string Usage = """
        TrellisGenerate: run TRELLIS (both stages + decoders) and write 3D Gaussian splatting .ply files and .glb meshes.

        usage: TrellisGenerate MODEL_DIR [options]
               TrellisGenerate --random-tiny [options]     (tiny random networks, no download; a smoke test)

        MODEL_DIR is a TRELLIS-image-large folder as released (pipeline.json + ckpts/), e.g.
          huggingface-cli download JeffreyXiang/TRELLIS-image-large --local-dir TRELLIS-image-large

        options:
          --image FILE         the picture to lift to 3D (PNG/JPEG/...; RGBA with a transparent background, or any picture
                               with --matting); repeat it for several views of one object
          --multi-image MODE   how several --image views combine: stochastic (default) or multidiffusion
          --dinov2 FILE        DINOv2 weights (dinov2_vitl14_reg4_pretrain.pth or .safetensors); default: $MDTDIST_DINOV2,
                               then ~/.cache/torch/hub/checkpoints/, then MODEL_DIR/dinov2_vitl14_reg4_pretrain.pth
          --matting FILE       an ONNX background-removal model (e.g. rembg's u2net.onnx) for pictures without transparency
          --ss-student PATH    an MDT-dist stage-1 student: a checkpoint pair (ckpts/NAME without extension) or a training
                               run folder (config.json + ckpts/denoiser_ema0.9999_stepNNNNNNN.pt; latest EMA step)
          --slat-student PATH  an MDT-dist stage-2 student, the same two forms
          --ss-steps N         stage-1 steps (default: pipeline.json, or 1 with --ss-student)
          --slat-steps N       stage-2 steps (default: pipeline.json, or 1 with --slat-student)
          --cfg W              guidance strength of both stages (students default to 0)
          --seed S             noise seed (default 1)
          --samples B          samples in one batch (default 1)
          --device D           cpu (default) or cuda[:i] (needs a TorchSharp CUDA backend)
          --out PREFIX         output prefix (default trellis: trellis_0.ply, trellis_0.glb, trellis_1.ply, ...)
          --no-glb             skip the mesh decoder and the .glb files
          --simplify F         remove this fraction of the mesh's triangles before writing the .glb (quadric
                               decimation; TRELLIS's to_glb uses 0.95); default 0 (keep every triangle)
          --preview-size N     side of the preview stills (default 256; 0: no preview); per sample PREFIX_i_preview.png
                               (labelled views) and PREFIX_i_turntable.gif
          --turntable-frames N frames of the turntable GIF (default 36; 0: none)
        """;

    /// <summary>Command-line entry point; returns the exit code.</summary>
    public static int Run(string[] args, TextWriter log)
    {
        var o = new Dictionary<string, string>();
        var images = new List<string>();
        string? modelDir = null;
        bool tiny = false;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--random-tiny") { tiny = true; continue; }
            if (args[i] == "--no-glb") { o["no-glb"] = "1"; continue; }
            if (args[i] is "-h" or "--help") { log.WriteLine(Usage); return 0; }
            if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                if (i + 1 >= args.Length) { log.WriteLine($"error: {args[i]} needs a value.\n\n{Usage}"); return 2; }
                if (args[i] == "--image") images.Add(args[++i]);
                else o[args[i][2..]] = args[++i];
                continue;
            }
            modelDir = args[i];
        }
        if (modelDir is null && !tiny) { log.WriteLine(Usage); return 1; }
        if (images.Count == 0) { log.WriteLine($"error: pass the picture to lift with --image FILE.\n\n{Usage}"); return 2; }
        try
        {
            var files = Generate(modelDir, tiny, images, o, log);
            return files.Count > 0 ? 0 : 4;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or StateDictMismatchException or ArgumentException or FormatException or KeyNotFoundException or NotSupportedException)
        {
            log.WriteLine($"error: {e.Message}");
            return 3;
        }
    }

    private static int Int(Dictionary<string, string> o, string key, int fallback) =>
        o.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;

    /// <summary>Encodes the pictures, runs the pipeline and writes the .ply files; returns their paths.</summary>
    public static IReadOnlyList<string> Generate(string? modelDir, bool tiny, IReadOnlyList<string> images, Dictionary<string, string> o, TextWriter log)
    {
        var device = o.TryGetValue("device", out var d) ? torch.device(d) : CPU;
        bool glb = !o.ContainsKey("no-glb");
        double simplify = o.TryGetValue("simplify", out var sf) ? double.Parse(sf, CultureInfo.InvariantCulture) : 0;
        if (!(simplify >= 0 && simplify < 1)) throw new ArgumentException($"--simplify must lie in [0, 1), found {simplify}.");
        var pipeline = tiny ? TinyPipeline(device, glb) : TrellisPipeline.FromFolder(modelDir!, ScalarType.Float32, device, loadMeshDecoder: glb);
        if (glb && pipeline.MeshDecoder is null) log.WriteLine("note: pipeline.json names no slat_decoder_mesh; no .glb is written");
        var ssSampler = pipeline.StructureSampler;
        var slatSampler = pipeline.LatentSampler;
        if (o.TryGetValue("ss-student", out var ssStem))
        {
            pipeline = pipeline.WithStructureFlow(LoadStudent<SparseStructureFlowModel>(ssStem, device));
            ssSampler = StageSampler.Student(1);
        }
        if (o.TryGetValue("slat-student", out var slatStem))
        {
            pipeline = pipeline.WithLatentFlow(LoadStudent<SLatFlowModel>(slatStem, device));
            slatSampler = StageSampler.Student(1);
        }
        ssSampler = ssSampler with { Steps = Int(o, "ss-steps", ssSampler.Steps) };
        slatSampler = slatSampler with { Steps = Int(o, "slat-steps", slatSampler.Steps) };
        if (o.TryGetValue("cfg", out var cfg))
        {
            double w = double.Parse(cfg, CultureInfo.InvariantCulture);
            ssSampler = ssSampler with { CfgStrength = w };
            slatSampler = slatSampler with { CfgStrength = w };
        }
        int samples = Int(o, "samples", 1);
        MultiImageMode? multi = null;
        if (images.Count > 1)
        {
            multi = o.GetValueOrDefault("multi-image", "stochastic") switch
            {
                "stochastic" => MultiImageMode.Stochastic,
                "multidiffusion" => MultiImageMode.MultiDiffusion,
                var m => throw new ArgumentException($"--multi-image must be stochastic or multidiffusion, got '{m}'."),
            };
        }
        using var matting = o.TryGetValue("matting", out var mattingFile) ? new OnnxMatting(mattingFile) : null;
        var preprocess = new ImagePreprocessOptions { Matting = matting };
        using var encoder = tiny
            ? new ImageConditionEncoder(TinyDinov2(pipeline.ConditionChannels, device), new ImagePreprocessor(preprocess))
            : ImageConditionEncoder.FromModelFolder(modelDir!, o.GetValueOrDefault("dinov2"), ScalarType.Float32, device, preprocess);
        var watchCond = Stopwatch.StartNew();
        var condition = encoder.Encode(images);
        using var owned = new Owned(condition.Cond, condition.NegCond);
        log.WriteLine($"condition: {images.Count} image(s) -> tokens [{string.Join(", ", condition.Cond.shape)}] in {watchCond.Elapsed.TotalSeconds:F2} s" +
                      (multi is { } mm ? $"; multi-image mode {mm}" : ""));

        log.WriteLine($"stage 1: {ssSampler.Steps} steps, cfg {ssSampler.CfgStrength} ({ssSampler.Evaluations()} evaluations); " +
                      $"stage 2: {slatSampler.Steps} steps, cfg {slatSampler.CfgStrength} ({slatSampler.Evaluations()} evaluations)");
        var watch = Stopwatch.StartNew();
        bool live = ReferenceEquals(log, Console.Out) && !Console.IsOutputRedirected;
        var progress = new Inline(p =>
        {
            if (p.Stage is not (TrellisStage.SparseStructure or TrellisStage.StructuredLatent)) return;
            if (live) log.Write($"\r  {p.Stage}: step {p.Step}/{p.TotalSteps}   ");
            if (p.Step == p.TotalSteps) log.WriteLine(live ? "" : $"  {p.Stage}: {p.TotalSteps} steps");
        });
        using var result = pipeline.Run(condition, new TrellisRunOptions
        {
            Seed = long.Parse(o.GetValueOrDefault("seed", "1"), CultureInfo.InvariantCulture), NumSamples = samples,
            StructureSampler = ssSampler, LatentSampler = slatSampler, Progress = progress, MultiImage = multi,
            Formats = TrellisFormats.Gaussians | (glb ? TrellisFormats.Mesh : TrellisFormats.None),
        });
        log.WriteLine($"done in {watch.Elapsed.TotalSeconds:F2} s (stage 1 {result.StructureTime.TotalSeconds:F2} s, structure decoder " +
                      $"{result.DecodeStructureTime.TotalSeconds:F2} s, stage 2 {result.LatentTime.TotalSeconds:F2} s, decoders {result.DecodeTime.TotalSeconds:F2} s)");
        var prefix = o.GetValueOrDefault("out", "trellis");
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
            if (s.Mesh is { } mesh)
            {
                var glbPath = $"{prefix}_{s.Index}.glb";
                long? target = simplify > 0 ? Math.Max(1, (long)Math.Round(mesh.FaceCount * (1 - simplify))) : null;
                MeshGlb.Save(glbPath, mesh, new GlbExportOptions { TargetFaceCount = target });
                files.Add(glbPath);
                log.WriteLine($"sample {s.Index}: mesh with {mesh.VertexCount} vertices, {mesh.FaceCount} triangles" +
                              (target is long t ? $" (simplified to <= {t})" : "") + (mesh.IsEmpty ? " (no surface: empty scene)" : "") + $" -> {glbPath}");
            }
            int previewSize = Int(o, "preview-size", 256);
            if (previewSize > 0)
            {
                var previews = Preview.SaveSample($"{prefix}_{s.Index}", s.Gaussians, mesh: s.Mesh, new SamplePreviewOptions
                {
                    Resolution = previewSize, TurntableResolution = previewSize, TurntableFrames = Int(o, "turntable-frames", 36),
                });
                files.AddRange(previews);
                log.WriteLine($"sample {s.Index}: preview -> {string.Join(", ", previews)}");
            }
        }
        return files;
    }

    /// <summary>Tiny random networks of TRELLIS's architecture (4³ structure latent, 16³ grid) for a smoke test.</summary>
    private static TrellisPipeline TinyPipeline(Device device, bool mesh)
    {
        nn.Module Build(string name, string args, long seed)
        {
            var m = TrellisCheckpoint.Build(new TrellisModelConfig(name, System.Text.Json.Nodes.JsonNode.Parse(args)!.AsObject()), ScalarType.Float32, device);
            var g = new Generator((ulong)seed);
            using var noGrad = torch.no_grad();
            foreach (var (pname, p) in m.named_parameters())
            {
                using var r = torch.randn(p.shape, generator: g);
                using var v = p.dim() >= 2 ? r / Math.Sqrt(p.numel() / (double)p.shape[0]) : pname.EndsWith("bias") ? r * 0.05 : 1 + 0.1 * r;
                p.copy_(v.to(p.device));
            }
            return m;
        }
        return new TrellisPipeline(
            (SparseStructureFlowModel)Build("SparseStructureFlowModel", """{"resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true}""", 1),
            (SparseStructureDecoder)Build("SparseStructureDecoder", """{"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [16, 8, 8], "num_res_blocks_middle": 1}""", 2),
            (SLatFlowModel)Build("SLatFlowModel", """{"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}""", 3),
            (SLatGaussianDecoder)Build("SLatGaussianDecoder", """{"resolution": 16, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 8, "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}}""", 4),
            structureSampler: StageSampler.TrellisImageLarge with { Steps = 12 }, latentSampler: StageSampler.TrellisImageLarge with { Steps = 12 },
            meshDecoder: mesh ? (SLatMeshDecoder)Build("SLatMeshDecoder", """{"resolution": 16, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"use_color": true}}""", 5) : null);
    }

    /// <summary>A student from a checkpoint pair or from a training run folder (TRELLIS's trainer layout).</summary>
    private static T LoadStudent<T>(string path, Device device) where T : nn.Module =>
        TrainingRunCheckpoint.IsTrainingRun(path)
            ? TrainingRunCheckpoint.Load<T>(path, dtype: ScalarType.Float32, device: device)
            : TrellisCheckpoint.Load<T>(path, ScalarType.Float32, device);

    /// <summary>A tiny random DINOv2 with registers (width = the tiny flows' condition width) for the smoke test.</summary>
    private static Dinov2Model TinyDinov2(long width, Device device)
    {
        var model = new Dinov2Model(new Dinov2Config(width, 1, 2, ImageSize: 28), ScalarType.Float32, device);
        var g = new Generator(5);
        using var noGrad = torch.no_grad();
        foreach (var (pname, p) in model.named_parameters())
        {
            using var r = torch.randn(p.shape, generator: g);
            using var v = p.dim() >= 2 ? r / Math.Sqrt(p.numel() / (double)p.shape[0]) : pname.EndsWith("bias") ? r * 0.05 : 1 + 0.1 * r;
            p.copy_(v.to(p.device));
        }
        return model;
    }

    private sealed class Owned(params Tensor[] tensors) : IDisposable
    {
        public void Dispose()
        {
            foreach (var t in tensors) t.Dispose();
        }
    }

    private sealed class Inline(Action<TrellisProgress> a) : IProgress<TrellisProgress>
    {
        public void Report(TrellisProgress value) => a(value);
    }
}
