using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using MdtDist.Core.Flow;
using MdtDist.Core.IO;
using MdtDist.Core.Sampling;
using MdtDist.Trellis;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Flow;
using MdtDist.Samples;
using MdtDist.Trellis.Models;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Stage1Structure;

/// <summary>Settings of one run of the sample.</summary>
public sealed record Stage1Options
{
    /// <summary>A TRELLIS model folder (with <c>pipeline.json</c> and <c>ckpts/</c>) or a <c>ckpts</c> folder.</summary>
    public string? ModelDir { get; init; }
    /// <summary>Override: the flow checkpoint stem (e.g. an MDT-dist student).</summary>
    public string? FlowCheckpoint { get; init; }
    /// <summary>Override: the structure decoder checkpoint stem.</summary>
    public string? DecoderCheckpoint { get; init; }
    /// <summary>Run on a tiny random network instead (smoke test; no download).</summary>
    public bool RandomTiny { get; init; }
    /// <summary>Euler steps (null: pipeline.json, else 25).</summary>
    public int? Steps { get; init; }
    /// <summary>CFG strength w (null: pipeline.json, else 5).</summary>
    public double? CfgStrength { get; init; }
    /// <summary>CFG interval (null: pipeline.json, else [0.5, 1]).</summary>
    public (double Lo, double Hi)? CfgInterval { get; init; }
    /// <summary>rescale_t (null: pipeline.json, else 3).</summary>
    public double? RescaleT { get; init; }
    /// <summary>Noise seed.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>Samples to draw.</summary>
    public int Batch { get; init; } = 1;
    /// <summary>A safetensors file with the condition tokens [1 or B, L, C] (e.g. TRELLIS's normalised DINOv2 features).</summary>
    public string? ConditionFile { get; init; }
    /// <summary>Parameter dtype.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>Transformer-torso compute dtype (float16 / bfloat16 as TRELLIS's use_fp16), null = <see cref="DType"/>.</summary>
    public ScalarType? TorsoDType { get; init; }
    /// <summary>Device ("cpu", "cuda", "cuda:1").</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Output .ply path (one file per sample, suffixed _i when Batch &gt; 1).</summary>
    public string Output { get; init; } = "structure.ply";
}

/// <summary>What a run produced.</summary>
/// <param name="Files">The .ply files written.</param>
/// <param name="Coords">Occupied voxels per run, int32 [N, 4] (sample, x, y, z).</param>
/// <param name="Evaluations">Flow network evaluations.</param>
public sealed record Stage1Result(IReadOnlyList<string> Files, Tensor Coords, int Evaluations) : IDisposable
{
    /// <summary>Frees <see cref="Coords"/>.</summary>
    public void Dispose() => Coords.Dispose();
}

/// <summary>
/// Stage 1 of TRELLIS in .NET: condition → sparse-structure flow (Euler + CFG with interval) → structure decoder →
/// occupied voxels of the 64³ grid → point .ply.
/// </summary>
public static class Stage1StructureApp
{
    /// <summary>The released checkpoints this sample needs.</summary>
    public const string FlowName = "ss_flow_img_dit_L_16l8_fp16";
    /// <summary>The released structure decoder.</summary>
    public const string DecoderName = "ss_dec_conv3d_16l8_fp16";

    /// <summary>
    /// Command-line entry point; returns the process exit code: 0 done, 1 an unknown option or a bad value
    /// (System.CommandLine's message) or nothing to run (the help is printed), 3 a missing or malformed file.
    /// </summary>
    public static int Run(string[] args, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(log);
        var modelDir = SampleCommandLine.OptionalPath("MODEL_DIR", "a TRELLIS-image-large folder (pipeline.json + ckpts/) or its ckpts/ folder");
        var tiny = new Option<bool>("--random-tiny") { Description = "tiny random network, no download (a smoke test: the structure is noise)" };
        var flow = new Option<string?>("--flow") { Description = "another flow checkpoint (ckpts/NAME without extension), e.g. an MDT-dist student" };
        var decoder = new Option<string?>("--decoder") { Description = "another structure decoder checkpoint" };
        var cond = new Option<string?>("--cond") { Description = "condition tokens [1 or B, L, 1024] in a .safetensors file (TRELLIS's layer-normed DINOv2 features); without it the condition is all zeros (unconditional structure)" };
        var steps = SampleCommandLine.Int("--steps", "Euler steps (default: pipeline.json, else 25)", min: 1);
        var cfg = SampleCommandLine.Number("--cfg", "guidance strength (default: pipeline.json, else 5)");
        var interval = new Option<(double Lo, double Hi)?>("--cfg-interval")
        {
            Description = "guidance interval in t, LO,HI (default: pipeline.json, else 0.5,1)", HelpName = "LO,HI", CustomParser = ParseInterval,
        };
        var rescale = SampleCommandLine.Number("--rescale-t", "time warp s*t/(1+(s-1)t) (default: pipeline.json, else 3)", v => v > 0, "a number > 0");
        var seed = new Option<long>("--seed") { Description = "noise seed", DefaultValueFactory = _ => 1 };
        var batch = SampleCommandLine.Int("--batch", "samples", min: 1, defaultValue: 1);
        var dtype = new Option<string>("--dtype") { Description = "parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong(DTypeNames);
        var torso = new Option<string?>("--torso-dtype") { Description = "compute dtype of the transformer blocks (e.g. float16 on CUDA)" };
        torso.AcceptOnlyFromAmong(DTypeNames);
        var device = new Option<string>("--device") { Description = "cpu or cuda[:i] (needs a CUDA TorchSharp backend)", DefaultValueFactory = _ => "cpu" };
        var output = new Option<string>("--out") { Description = "output .ply (_i suffix per sample when B > 1)", DefaultValueFactory = _ => "structure.ply" };
        var root = new RootCommand(Description)
        {
            modelDir, tiny, flow, decoder, cond, steps, cfg, interval, rescale, seed, batch, dtype, torso, device, output,
        };
        root.SetAction(pr =>
        {
            var o = new Stage1Options
            {
                ModelDir = pr.GetValue(modelDir), RandomTiny = pr.GetValue(tiny), FlowCheckpoint = pr.GetValue(flow), DecoderCheckpoint = pr.GetValue(decoder),
                ConditionFile = pr.GetValue(cond), Steps = pr.GetValue(steps), CfgStrength = pr.GetValue(cfg), CfgInterval = pr.GetValue(interval),
                RescaleT = pr.GetValue(rescale), Seed = pr.GetValue(seed), Batch = pr.GetValue(batch), DType = ParseDType(pr.GetValue(dtype)!),
                TorsoDType = pr.GetValue(torso) is { } td ? ParseDType(td) : null, Device = pr.GetValue(device)!, Output = pr.GetValue(output)!,
            };
            if (o.ModelDir is null && o.FlowCheckpoint is null && !o.RandomTiny)
            {
                SampleCommandLine.PrintHelp(root, log);
                return 1;
            }
            return Execute(o, log);
        });
        if (args.Length == 0)
        {
            SampleCommandLine.PrintHelp(root, log);
            return 1;
        }
        return SampleCommandLine.Invoke(root, args, log);
    }

    private static int Execute(Stage1Options o, TextWriter log)
    {
        var console = SampleCommandLine.ConsoleFor(log);
        try
        {
            Stage1Result result;
            if (SampleCommandLine.CanDrawBars(console))
            {
                // Live bars own the terminal while they run: the sample's lines are held back and printed after them.
                var held = new StringWriter();
                Stage1Result? r = null;
                SampleCommandLine.Bars(console).Start(ctx =>
                {
                    var task = ctx.AddTask("stage 1 (sparse structure)");
                    r = Sample(o, held, new InlineProgress<SamplerProgress>(p => { task.MaxValue = p.TotalSteps; task.Value = p.Step; }));
                });
                log.Write(held.ToString());
                result = r!;
            }
            else
            {
                result = Sample(o, log);
            }
            using (result)
            {
                var table = SampleCommandLine.Table("sample", "occupied voxels", "file");
                for (int b = 0; b < result.Files.Count; b++)
                {
                    long n = result.Coords.shape[0] == 0 ? 0 : (result.Coords[.., 0] == b).sum().item<long>();
                    table.AddRow(b.ToString(CultureInfo.InvariantCulture), n.ToString(CultureInfo.InvariantCulture), Markup.Escape(result.Files[b]));
                }
                table.Caption($"{result.Evaluations} flow evaluations");
                console.Write(table);
            }
            return 0;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or StateDictMismatchException or ArgumentException or NotSupportedException)
        {
            log.WriteLine($"error: {e.Message}");
            return 3;
        }
    }

    /// <summary>What the sample does and what to download (the head of its help).</summary>
    public static string Description => $"""
        Stage1Structure: sample TRELLIS's sparse structure (stage 1) and write the occupied voxels as a .ply point file.

        usage: Stage1Structure MODEL_DIR [options]
               Stage1Structure --random-tiny [options]      (tiny random network, no download; a smoke test)

        MODEL_DIR is a TRELLIS-image-large folder (pipeline.json + ckpts/) or its ckpts/ folder. It needs
          ckpts/{FlowName}.json + ckpts/{FlowName}.safetensors   (stage-1 flow)
          ckpts/{DecoderName}.json + ckpts/{DecoderName}.safetensors       (structure decoder)
        from https://huggingface.co/JeffreyXiang/TRELLIS-image-large (tree/main/ckpts), e.g.
          huggingface-cli download JeffreyXiang/TRELLIS-image-large pipeline.json ckpts/{FlowName}.json \
            ckpts/{FlowName}.safetensors ckpts/{DecoderName}.json ckpts/{DecoderName}.safetensors --local-dir TRELLIS-image-large
        """;

    private static readonly string[] DTypeNames = { "float32", "fp32", "float64", "fp64", "float16", "fp16", "bfloat16", "bf16" };

    private static (double, double)? ParseInterval(System.CommandLine.Parsing.ArgumentResult r)
    {
        var s = r.Tokens[^1].Value;
        var parts = s.Split(',');
        if (parts.Length == 2
            && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var lo)
            && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var hi)
            && lo >= 0 && lo <= hi && hi <= 1)
            return (lo, hi);
        r.AddError($"--cfg-interval needs LO,HI with 0 <= LO <= HI <= 1, got '{s}'.");
        return null;
    }

    private static ScalarType ParseDType(string s) => s switch
    {
        "float32" or "fp32" => ScalarType.Float32,
        "float64" or "fp64" => ScalarType.Float64,
        "float16" or "fp16" => ScalarType.Float16,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        _ => throw new ArgumentException($"unknown dtype '{s}' (float32, float64, float16, bfloat16).", nameof(s)),
    };

    /// <summary>The sampler settings of a TRELLIS pipeline.json (stage 1), when the folder has one.</summary>
    private sealed record PipelineDefaults(string? FlowStem, string? DecoderStem, int? Steps, double? Cfg, (double, double)? Interval, double? RescaleT);

    private static PipelineDefaults ReadPipeline(string dir)
    {
        var file = Path.Combine(dir, "pipeline.json");
        if (!File.Exists(file)) return new PipelineDefaults(null, null, null, null, null, null);
        var root = JsonNode.Parse(File.ReadAllText(file))?["args"];
        string? Model(string key) => root?["models"]?[key]?.GetValue<string>() is { } v ? Path.Combine(dir, v) : null;
        var p = root?["sparse_structure_sampler"]?["params"];
        (double, double)? interval = p?["cfg_interval"] is JsonArray arr && arr.Count == 2 ? (arr[0]!.GetValue<double>(), arr[1]!.GetValue<double>()) : null;
        return new PipelineDefaults(Model("sparse_structure_flow_model"), Model("sparse_structure_decoder"),
            p?["steps"]?.GetValue<int>(), p?["cfg_strength"]?.GetValue<double>(), interval, p?["rescale_t"]?.GetValue<double>());
    }

    /// <summary>Tiny random stage-1 networks (8³×8 latent → 32³ occupancy; the released ones are 16³×8 → 64³), for smoke tests.</summary>
    public static (SparseStructureFlowModel Flow, SparseStructureDecoder Decoder) RandomTinyNetworks(long seed, ScalarType dtype, Device? device)
    {
        torch.manual_seed(seed);
        var flow = new SparseStructureFlowModel(new SparseStructureFlowConfig
        {
            Resolution = 8, InChannels = 8, OutChannels = 8, ModelChannels = 32, CondChannels = 16, NumBlocks = 1, NumHeads = 2,
            PatchSize = 1, QkRmsNorm = true,
        }, dtype, device);
        var decoder = new SparseStructureDecoder(new SparseStructureDecoderConfig
        {
            OutChannels = 1, LatentChannels = 8, NumResBlocks = 1, NumResBlocksMiddle = 1, Channels = new long[] { 16, 8, 8 },
        }, dtype, device);
        return (flow, decoder);
    }

    /// <summary>Runs stage 1 and writes the .ply file(s).</summary>
    /// <param name="o">What to run.</param>
    /// <param name="log">Where the run's lines go.</param>
    /// <param name="progress">Per-step progress; without it each step is a line of <paramref name="log"/>.</param>
    public static Stage1Result Sample(Stage1Options o, TextWriter log, IProgress<SamplerProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(o);
        var device = new Device(o.Device);
        SparseStructureFlowModel flow;
        SparseStructureDecoder decoder;
        int steps; double cfg, rescale; (double Lo, double Hi) interval;
        if (o.RandomTiny)
        {
            (flow, decoder) = RandomTinyNetworks(o.Seed + 1000, o.DType, device);
            (steps, cfg, rescale, interval) = (o.Steps ?? 4, o.CfgStrength ?? 5, o.RescaleT ?? 3, o.CfgInterval ?? (0.5, 1.0));
            log.WriteLine("running on a tiny RANDOM network (smoke test): the structure is noise.");
        }
        else
        {
            string dir = o.ModelDir ?? ".";
            if (o.ModelDir is not null && !Directory.Exists(dir)) throw new DirectoryNotFoundException($"model folder '{dir}' does not exist.");
            var pipe = ReadPipeline(dir);
            string ckpts = Directory.Exists(Path.Combine(dir, "ckpts")) ? Path.Combine(dir, "ckpts") : dir;
            string flowStem = o.FlowCheckpoint ?? pipe.FlowStem ?? Path.Combine(ckpts, FlowName);
            string decStem = o.DecoderCheckpoint ?? pipe.DecoderStem ?? Path.Combine(ckpts, DecoderName);
            log.WriteLine($"loading {flowStem} ({o.DType} on {device})");
            flow = TrellisCheckpoint.Load<SparseStructureFlowModel>(flowStem, o.DType, device);
            log.WriteLine($"loading {decStem}");
            decoder = TrellisCheckpoint.Load<SparseStructureDecoder>(decStem, o.DType, device);
            (steps, cfg, rescale, interval) = (o.Steps ?? pipe.Steps ?? 25, o.CfgStrength ?? pipe.Cfg ?? 5, o.RescaleT ?? pipe.RescaleT ?? 3, o.CfgInterval ?? pipe.Interval ?? (0.5, 1.0));
        }
        using (flow)
        using (decoder)
        {
            flow.eval();
            decoder.eval();
            if (o.TorsoDType is { } td) { flow.SetTorsoDType(td); decoder.SetTorsoDType(td); }
            using var noGrad = torch.no_grad();
            using var scope = torch.NewDisposeScope();

            var cond = LoadCondition(o, flow.Config, log).to(o.DType, device);
            var model = new SparseStructureFlowAdapter(flow);
            torch.manual_seed(o.Seed);
            var noise = torch.randn(model.LatentShape(o.Batch), dtype: o.DType, device: device);
            var grid = TimeGrid.Trellis(steps, rescale);
            var guided = new ClassifierFreeGuidance(model, cfg, negativeCondition: null, intervalStart: interval.Lo, intervalEnd: interval.Hi);
            log.WriteLine($"sampling {o.Batch} structure(s): {steps} Euler steps, cfg {cfg} on t in [{interval.Lo}, {interval.Hi}], rescale_t {rescale}");
            using var result = new EulerSolver().Sample(guided, Latent.Dense(noise), cond, grid, new SamplerOptions
            {
                OnStep = progress is null ? s => log.WriteLine($"  step {s.Index + 1}/{steps}: t {s.T:F4} -> {s.TPrev:F4}") : null,
                Progress = progress,
            });
            var coords = decoder.DecodeOccupancy(result.Samples);
            long resolution = flow.Config.Resolution << (decoder.Config.Channels.Count - 1);   // each upsampling stage doubles
            var files = new List<string>();
            for (int b = 0; b < o.Batch; b++)
            {
                var path = o.Batch == 1 ? o.Output : Path.Combine(Path.GetDirectoryName(o.Output) ?? "", $"{Path.GetFileNameWithoutExtension(o.Output)}_{b}{Path.GetExtension(o.Output)}");
                var rows = coords.index_select(0, torch.nonzero(coords[.., 0] == b).reshape(-1));
                WritePointPly(path, rows, resolution);
                log.WriteLine($"sample {b}: {rows.shape[0]} occupied voxels of {resolution}³ -> {path}");
                files.Add(path);
            }
            return new Stage1Result(files, coords.cpu().MoveToOuterDisposeScope(), result.Evaluations);
        }
    }

    private static Tensor LoadCondition(Stage1Options o, SparseStructureFlowConfig cfg, TextWriter log)
    {
        if (o.ConditionFile is null)
        {
            long tokens = o.RandomTiny ? 8 : 1374;
            log.WriteLine(o.RandomTiny
                ? "condition: random tokens"
                : $"condition: none given (--cond), using zeros [1, {tokens}, {cfg.CondChannels}] (an unconditional structure; guidance has no effect)");
            return o.RandomTiny
                ? torch.randn(new long[] { 1, tokens, cfg.CondChannels }, generator: new Generator((ulong)o.Seed + 7))
                : torch.zeros(1, tokens, cfg.CondChannels);
        }
        var tensors = SafeTensors.Load(o.ConditionFile);
        var cond = tensors.TryGetValue("cond", out var c) ? c : tensors.Count == 1 ? tensors.Values.Single()
            : throw new InvalidDataException($"'{o.ConditionFile}' holds {tensors.Count} tensors and none is named 'cond'.");
        if (cond.dim() == 2) cond = cond.unsqueeze(0);
        log.WriteLine($"condition: {o.ConditionFile} [{string.Join(", ", cond.shape)}]");
        return cond;
    }

    /// <summary>
    /// Writes voxel centres as a binary little-endian PLY point cloud (<c>x y z</c> float), positions
    /// <c>(coord + 0.5) / resolution − 0.5</c> in the unit cube around the origin, as TRELLIS places voxels.
    /// </summary>
    /// <param name="path">Output file (written atomically).</param>
    /// <param name="coords">int [N, 4] rows (sample, x, y, z).</param>
    /// <param name="resolution">Grid resolution (64 for TRELLIS).</param>
    public static void WritePointPly(string path, Tensor coords, long resolution)
    {
        if (coords.dim() != 2 || coords.shape[1] != 4) throw new ArgumentException($"coords must be [N, 4], got [{string.Join(", ", coords.shape)}].", nameof(coords));
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1, got {resolution}.", nameof(resolution));
        using var scope = torch.NewDisposeScope();
        var xyz = ((coords[.., 1..].to(ScalarType.Float64).cpu() + 0.5) / resolution - 0.5).to(ScalarType.Float32).contiguous();
        long n = xyz.shape[0];
        var header = Encoding.ASCII.GetBytes($"ply\nformat binary_little_endian 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n");
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            fs.Write(header);
            if (n > 0) fs.Write(xyz.bytes);
        }
        File.Move(tmp, full, overwrite: true);
    }
}
