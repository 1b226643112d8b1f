using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;

namespace MdtDist.Trellis.Data;

/// <summary>
/// A training config in TRELLIS / MDT-dist's layout (<c>configs/ss_flow_img_dit_L_16l8_fp16.json</c> and the like):
/// <c>models.denoiser</c> and <c>models.teacher</c> (class name + arguments), <c>dataset.name</c> + <c>args</c>,
/// <c>trainer.name</c> + <c>args</c>, mapped onto this library's <see cref="MdtDistSettings"/>,
/// <see cref="MdtDistillerOptions"/> and <see cref="TrellisDatasetOptions"/>.
/// </summary>
/// <remarks>
/// Every key is honoured, or reported: keys that do not change what is trained here (<c>prefetch_data</c>,
/// <c>log_param_stats</c>, <c>i_print</c>, <c>i_ddpcheck</c>, the datasets' visualisation decoders) are listed in <see cref="Ignored"/> with the reason and
/// logged by the caller; keys whose value cannot be honoured (a list of guidance strengths to draw from, an optimizer
/// other than AdamW, a learning-rate scheduler, <c>p_uncond</c> &gt; 0, a fixed-norm <c>grad_clip</c>, <c>fp16_mode</c>
/// <c>amp</c>) and unknown keys fail, all at once, naming the file and the key.
/// </remarks>
public sealed class TrellisTrainingConfig
{
    /// <summary>The trainer classes of MDT-dist (and the class name its released stage-2 config uses).</summary>
    public static IReadOnlyList<string> KnownTrainers { get; } = new[]
    {
        "FlowMDTTrainer", "FlowMDTCFGTrainer", "TextConditionedFlowMDTCFGTrainer", "ImageConditionedFlowMDTCFGTrainer",
        "SparseFlowMDTTrainer", "SparseFlowMDTCFGTrainer", "TextConditionedSparseFlowMDTCFGTrainer", "ImageConditionedSparseFlowMDTCFGTrainer",
        "ImageConditionedSparseFlowMatchingCFGTrainer",
    };

    private TrellisTrainingConfig() { }

    /// <summary>The file it was read from.</summary>
    public string Source { get; private init; } = "";

    /// <summary><c>models.denoiser</c>: the student's class and arguments.</summary>
    public TrellisModelConfig Denoiser { get; private init; } = null!;

    /// <summary><c>models.teacher</c> (the denoiser's config when absent).</summary>
    public TrellisModelConfig Teacher { get; private init; } = null!;

    /// <summary><c>dataset.name</c>.</summary>
    public string DatasetName { get; private init; } = "";

    /// <summary>The dataset's options.</summary>
    public TrellisDatasetOptions Dataset { get; private init; } = null!;

    /// <summary><c>trainer.name</c>.</summary>
    public string TrainerName { get; private init; } = "";

    /// <summary>The MDT-dist objective's settings.</summary>
    public MdtDistSettings Objective { get; private init; } = new();

    /// <summary>The optimizer, EMA, clipping, precision, accumulation and checkpoint/log cadence.</summary>
    public MdtDistillerOptions Trainer { get; private init; } = new();

    /// <summary><c>max_steps</c>.</summary>
    public long MaxSteps { get; private init; }

    /// <summary>Batch size per process (<c>batch_size_per_gpu</c>, or <c>batch_size</c> / world size).</summary>
    public int BatchSizePerRank { get; private init; }

    /// <summary><c>i_sample</c>: steps between sample snapshots (0: none).</summary>
    public long SampleEvery { get; private init; }

    /// <summary><c>rescale_t</c> of the snapshot sampler.</summary>
    public double SnapshotRescaleT { get; private init; } = 1.0;

    /// <summary><c>finetune_ckpt</c>: model key (<c>denoiser</c>, <c>teacher</c>) → checkpoint reference, as written.</summary>
    public IReadOnlyDictionary<string, string> FinetuneCheckpoints { get; private init; } = new Dictionary<string, string>();

    /// <summary><c>image_cond_model</c> (image-conditioned trainers).</summary>
    public string? ImageConditionModel { get; private init; }

    /// <summary><c>trainer.args.elastic</c>: TRELLIS's memory controller for the (elastic) denoiser; null: none.</summary>
    public LinearMemoryControllerOptions? Elastic { get; private init; }

    /// <summary>Keys accepted without effect here, each with the reason.</summary>
    public IReadOnlyList<string> Ignored { get; private init; } = Array.Empty<string>();

    /// <summary>Reads and maps a config file.</summary>
    /// <param name="path">The JSON file.</param>
    /// <param name="worldSize">Processes the batch is spread over (for <c>batch_size</c>).</param>
    /// <exception cref="FileNotFoundException">The file is missing.</exception>
    /// <exception cref="InvalidDataException">Every problem (unknown or unsupported key, wrong type, out of range), in one
    /// message naming the file and the keys.</exception>
    public static TrellisTrainingConfig Load(string path, int worldSize = 1)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"training config '{path}' does not exist.", path);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"'{path}' is not valid JSON: {e.Message}", e); }
        return FromJson(root as JsonObject ?? throw new InvalidDataException($"'{path}' must hold a JSON object."), $"'{path}'", worldSize);
    }

    /// <summary>Maps a parsed config (see <see cref="Load"/>); <paramref name="source"/> names it in messages.</summary>
    public static TrellisTrainingConfig FromJson(JsonObject root, string source, int worldSize = 1)
    {
        ArgumentNullException.ThrowIfNull(root);
        if (worldSize < 1) throw new ArgumentException($"worldSize must be >= 1, got {worldSize}.", nameof(worldSize));
        var errors = new List<string>();
        var ignored = new List<string>();
        LinearMemoryControllerOptions? elastic = null;
        foreach (var key in root.Select(kv => kv.Key))
            if (key is not ("models" or "dataset" or "trainer")) errors.Add($"'{key}' is not a section of a TRELLIS training config (models, dataset, trainer)");

        // models
        TrellisModelConfig? denoiser = null, teacher = null;
        if (root["models"] is JsonObject models)
        {
            foreach (var (key, value) in models)
            {
                if (key is not ("denoiser" or "teacher")) { errors.Add($"models.{key} is not a model MDT-dist trains (denoiser, teacher)"); continue; }
                if (value is JsonObject m && m["name"] is JsonValue n && n.GetValueKind() == JsonValueKind.String && (m["args"] is JsonObject || m["args"] is null) && m.Count <= 2)
                {
                    var cfg = new TrellisModelConfig(n.GetValue<string>(), (m["args"] as JsonObject)?.DeepClone().AsObject() ?? new JsonObject());
                    if (key == "denoiser") denoiser = cfg; else teacher = cfg;
                }
                else errors.Add($"models.{key} must be {{\"name\": string, \"args\": object}}, found {value?.ToJsonString() ?? "null"}");
            }
            if (denoiser is null && !models.ContainsKey("denoiser")) errors.Add("models.denoiser is required");
        }
        else errors.Add("models must be an object with a denoiser");

        // dataset
        TrellisDatasetOptions? dataset = null;
        string datasetName = "";
        if (root["dataset"] is JsonObject ds && ds["name"] is JsonValue dn && dn.GetValueKind() == JsonValueKind.String)
        {
            datasetName = dn.GetValue<string>();
            foreach (var k in ds.Select(kv => kv.Key)) if (k is not ("name" or "args")) errors.Add($"dataset.{k} is not a dataset field (name, args)");
            try
            {
                dataset = TrellisDatasetOptions.FromConfig(datasetName, ds["args"] as JsonObject, source, out var dsIgnored);
                ignored.AddRange(dsIgnored.Select(k => $"{k} (sample snapshots decode with the teacher folder's decoders)"));
            }
            catch (InvalidDataException e) { errors.Add(e.Message.StartsWith(source + ": ", StringComparison.Ordinal) ? e.Message[(source.Length + 2)..].TrimEnd('.') : e.Message); }
        }
        else errors.Add("dataset must be {\"name\": string, \"args\": object}");

        // trainer
        string trainerName = "";
        var settings = new MdtDistSettings();
        var options = new MdtDistillerOptions();
        long maxSteps = 0, sampleEvery = 0;
        int? perRank = null, global = null;
        double rescaleT = 1.0;
        string? imageCond = null;
        var finetune = new Dictionary<string, string>(StringComparer.Ordinal);
        if (root["trainer"] is JsonObject tr && tr["name"] is JsonValue tn && tn.GetValueKind() == JsonValueKind.String)
        {
            trainerName = tn.GetValue<string>();
            if (!KnownTrainers.Contains(trainerName)) errors.Add($"trainer.name \"{trainerName}\" is not an MDT-dist trainer (known: {string.Join(", ", KnownTrainers)})");
            foreach (var k in tr.Select(kv => kv.Key)) if (k is not ("name" or "args")) errors.Add($"trainer.{k} is not a trainer field (name, args)");
            var a = new ConfigArgs(trainerName, tr["args"] as JsonObject, "trainer.args.");
            // An object of an unsupported kind is reported once, as a whole (its own keys are not checked).
            void RejectWhole(ConfigArgs part, string key, string why)
            {
                part.Accept("args");
                a.Reject(key, why);
            }
            maxSteps = a.Int("max_steps");
            if (a.Has("max_steps") && (maxSteps < 1 || maxSteps > long.MaxValue / 2)) a.Reject("max_steps", $"must be in [1, {long.MaxValue / 2}], got {maxSteps}");
            if (a.Has("batch_size_per_gpu")) perRank = (int)a.Int("batch_size_per_gpu", 1, 1, 1 << 20);
            if (a.Has("batch_size")) global = (int)a.Int("batch_size", 1, 1, 1 << 24);
            options = options with { BatchSplit = (int)a.Int("batch_split", options.BatchSplit, 1, 1 << 20) };

            if (a.Object("optimizer", required: false, ignoreUnknown: false) is { } opt)
            {
                if (opt.String("name") != "AdamW")
                    RejectWhole(opt, "optimizer", $"must be {{\"name\": \"AdamW\", \"args\": {{...}}}} (only AdamW is supported), found {ConfigArgs.Show(a.Raw("optimizer"))}");
                else if (opt.Object("args", required: false, ignoreUnknown: false) is { } oa)
                {
                    options = options with
                    {
                        LearningRate = oa.Double("lr", options.LearningRate, 0, 10),
                        WeightDecay = oa.Double("weight_decay", options.WeightDecay, 0, 10),
                        Epsilon = oa.Double("eps", options.Epsilon, 0, 1),
                    };
                    if (oa.DoubleListOrNull("betas") is { } betas)
                    {
                        if (betas.Length == 2 && betas.All(b => b >= 0 && b < 1)) options = options with { Beta1 = betas[0], Beta2 = betas[1] };
                        else a.Reject("optimizer.args.betas", $"must be two numbers in [0, 1), found [{string.Join(", ", betas)}]");
                    }
                }
                else opt.Accept("args");
            }
            if (a.Raw("lr_scheduler") is not null) a.Reject("lr_scheduler", "is not supported (use MdtDistillerOptions.LearningRateSchedule from code)");
            if (a.Has("grad_clip") && a.Raw("grad_clip") is null) options = options with { Clipping = null };
            else if (a.Object("grad_clip", required: false, ignoreUnknown: false) is { } gc)
            {
                if (gc.String("name") != "AdaptiveGradClipper")
                    RejectWhole(gc, "grad_clip", $"must be null or an AdaptiveGradClipper (a fixed max-norm clip is not supported), found {ConfigArgs.Show(a.Raw("grad_clip"))}");
                else
                {
                    var clip = new GradientClipping();
                    if (gc.Object("args", required: false, ignoreUnknown: false) is { } ga)
                    {
                        clip = clip with
                        {
                            Percentile = ga.Double("clip_percentile", clip.Percentile, 0, 100),
                            BufferSize = (int)ga.Int("buffer_size", clip.BufferSize, 1, 1 << 24),
                        };
                        if (ga.Has("max_norm"))
                            clip = clip with { MaxNorm = ga.Raw("max_norm") is null ? null : ga.Double("max_norm", 0, 0, 1e30) };
                    }
                    options = options with { Clipping = clip };
                }
            }
            switch (a.Raw("ema_rate"))
            {
                case null: break;
                case JsonArray:
                    if (a.DoubleListOrNull("ema_rate") is { } ers && ers.All(r => r >= 0 && r < 1)) options = options with { EmaRates = ers };
                    else a.Reject("ema_rate", "must be a number or a list of numbers in [0, 1)");
                    break;
                default:
                    options = options with { EmaRates = new[] { a.Double("ema_rate", 0, 0, 1 - 1e-12) } };
                    break;
            }
            if (a.Has("fp16_mode"))
            {
                if (a.String("fp16_mode", "") == "inflat_all") options = options with { Precision = TrainingPrecision.Fp32MasterWeights };
                else a.Reject("fp16_mode", $"must be \"inflat_all\" (\"amp\" is not supported), found {ConfigArgs.Show(a.Raw("fp16_mode"))}");
            }
            options = options with { LossScaleGrowth = a.Double("fp16_scale_growth", options.LossScaleGrowth, 0, 1) };
            if (a.Object("finetune_ckpt", required: false, ignoreUnknown: false) is { } fc)
                foreach (var model in new[] { "denoiser", "teacher" }.Where(fc.Has))
                    finetune[model] = fc.String(model);
            options = options with
            {
                LogEvery = (int)a.Int("i_log", options.LogEvery, 1, int.MaxValue),
                CheckpointEvery = a.Int("i_save", options.CheckpointEvery, 1, long.MaxValue / 2),
            };
            sampleEvery = a.Int("i_sample", 0, 0, long.MaxValue / 2);
            foreach (var key in new[] { "i_print", "i_ddpcheck", "prefetch_data", "log_param_stats" }.Where(a.Has))
            {
                a.Accept(key);
                ignored.Add($"trainer.args.{key} (no effect here: progress is reported through IProgress, data is read synchronously)");
            }
            if (a.Raw("elastic") is { } el)   // null (TRELLIS's default) means no controller
            {
                try { elastic = LinearMemoryControllerOptions.FromConfig(el, "trainer.args.elastic"); }
                catch (InvalidDataException e) { errors.Add(e.Message.TrimEnd('.')); }
            }
            if (a.Double("p_uncond", 0, 0, 1) > 0) a.Reject("p_uncond", "> 0 (condition dropout while distilling) is not supported; MDT-dist's configs use 0");
            if (a.Object("t_schedule", required: false, ignoreUnknown: false) is { } ts)
            {
                if (ts.String("name") != "logitNormal")
                    RejectWhole(ts, "t_schedule", $"must be {{\"name\": \"logitNormal\", \"args\": {{mean, std}}}}, found {ConfigArgs.Show(a.Raw("t_schedule"))}");
                else
                {
                    var ta = ts.Object("args", required: false, ignoreUnknown: false);
                    double mean = ta?.Double("mean", 0, -100, 100) ?? 0, std = ta?.Double("std", 1, 1e-6, 100) ?? 1;
                    settings = settings with { TimeSampler = new LogitNormalTimeSampler(mean, std) };
                }
            }
            settings = settings with { SigmaMin = a.Double("sigma_min", settings.SigmaMin, 0, 0.5) };
            if (a.Has("distill_type"))
            {
                switch (a.String("distill_type", ""))
                {
                    case "discrete": settings = settings with { Mode = DistillationMode.Discrete }; break;
                    case "continuous": settings = settings with { Mode = DistillationMode.Continuous }; break;
                    case "cm": settings = settings with { Mode = DistillationMode.ConsistencyModel }; break;
                    default: a.Reject("distill_type", $"must be \"discrete\", \"continuous\" or \"cm\", found {ConfigArgs.Show(a.Raw("distill_type"))}"); break;
                }
            }
            double Scalar(string key, double dflt, double lo, double hi)
            {
                if (a.Raw(key) is JsonArray) { a.Reject(key, "a list (a value drawn per step) is not supported; give one number"); return dflt; }
                return a.Double(key, dflt, lo, hi);
            }
            settings = settings with
            {
                Interval = Scalar("distill_interval", settings.Interval, 1e-6, 0.5),
                GuidanceVm = Scalar("cfg_teacher_vm", settings.GuidanceVm, 0, 1e4),
                GuidanceVd = Scalar("cfg_teacher_vd", settings.GuidanceVd, 0, 1e4),
                Multiphase = (int)a.Int("multiphase", settings.Multiphase, 1, 1000),
                LambdaVm = a.Double("lambda_vm", settings.LambdaVm, 0, 1e6),
                LambdaVd = a.Double("lambda_vd", settings.LambdaVd, 0, 1e6),
                DNorm = a.Bool("d_norm", settings.DNorm),
            };
            rescaleT = a.Double("rescale_t", rescaleT, 1e-6, 1e6);
            if (a.Has("image_cond_model")) imageCond = a.String("image_cond_model");
            errors.AddRange(a.Problems());
        }
        else errors.Add("trainer must be {\"name\": string, \"args\": object}");

        int batch = 0;
        if (perRank is int p && global is int g && p * worldSize != g)
            errors.Add($"trainer.args.batch_size ({g}) and batch_size_per_gpu ({p}) disagree for {worldSize} process(es)");
        else if (perRank is int p2) batch = p2;
        else if (global is int g2)
        {
            if (g2 % worldSize != 0) errors.Add($"trainer.args.batch_size ({g2}) is not a multiple of the {worldSize} process(es)");
            batch = g2 / worldSize;
        }
        else errors.Add("trainer.args.batch_size_per_gpu (or batch_size) is required");
        if (batch > 0 && options.BatchSplit > batch) errors.Add($"trainer.args.batch_split ({options.BatchSplit}) exceeds the batch per process ({batch})");
        if (dataset is not null && imageCond is not null && dataset.Condition != TrellisConditionKind.Image)
            errors.Add($"trainer.args.image_cond_model is set but dataset {datasetName} is not image-conditioned");

        if (elastic is not null && denoiser is not null && denoiser.Name != SLatFlowConfig.ElasticClassName)
            errors.Add($"trainer.args.elastic needs an elastic denoiser ({SLatFlowConfig.ElasticClassName}), models.denoiser is {denoiser.Name}");
        if (errors.Count > 0) throw new InvalidDataException($"{source}: {string.Join("; ", errors)}.");
        return new TrellisTrainingConfig
        {
            Source = source, Denoiser = denoiser!, Teacher = teacher ?? denoiser!, DatasetName = datasetName, Dataset = dataset!,
            TrainerName = trainerName, Objective = settings, Trainer = options, MaxSteps = maxSteps, BatchSizePerRank = batch,
            SampleEvery = sampleEvery, SnapshotRescaleT = rescaleT, FinetuneCheckpoints = finetune, ImageConditionModel = imageCond,
            Ignored = ignored, Elastic = elastic,
        };
    }
}
