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
            var args = tr["args"] as JsonObject ?? new JsonObject();
            double Num(string key, JsonNode? v, double lo, double hi)
            {
                if (Json.Number(v) is double x && x >= lo && x <= hi) return x;
                errors.Add($"trainer.args.{key} must be a number in [{lo}, {hi}], found {v?.ToJsonString() ?? "null"}");
                return lo;
            }
            long Int(string key, JsonNode? v, long lo, long hi) => (long)Math.Round(Num(key, v, lo, hi));
            bool Bool(string key, JsonNode? v)
            {
                if (v is JsonValue b && b.GetValueKind() is JsonValueKind.True or JsonValueKind.False) return b.GetValue<bool>();
                errors.Add($"trainer.args.{key} must be true or false, found {v?.ToJsonString() ?? "null"}");
                return false;
            }
            double Scalar(string key, JsonNode? v, double lo, double hi)
            {
                if (v is JsonArray) { errors.Add($"trainer.args.{key} as a list (a value drawn per step) is not supported; give one number"); return lo; }
                return Num(key, v, lo, hi);
            }
            foreach (var (key, v) in args)
            {
                switch (key)
                {
                    case "max_steps": maxSteps = Int(key, v, 1, long.MaxValue / 2); break;
                    case "batch_size_per_gpu": perRank = (int)Int(key, v, 1, 1 << 20); break;
                    case "batch_size": global = (int)Int(key, v, 1, 1 << 24); break;
                    case "batch_split": options = options with { BatchSplit = (int)Int(key, v, 1, 1 << 20) }; break;
                    case "optimizer":
                        if (v is JsonObject o && o["name"] is JsonValue on && on.GetValueKind() == JsonValueKind.String && on.GetValue<string>() == "AdamW")
                        {
                            foreach (var (ok, ov) in o["args"] as JsonObject ?? new JsonObject())
                            {
                                switch (ok)
                                {
                                    case "lr": options = options with { LearningRate = Num("optimizer.args.lr", ov, 0, 10) }; break;
                                    case "weight_decay": options = options with { WeightDecay = Num("optimizer.args.weight_decay", ov, 0, 10) }; break;
                                    case "eps": options = options with { Epsilon = Num("optimizer.args.eps", ov, 0, 1) }; break;
                                    case "betas":
                                        if (Json.Numbers(ov) is { Length: 2 } betas && betas.All(b => b >= 0 && b < 1)) options = options with { Beta1 = betas[0], Beta2 = betas[1] };
                                        else errors.Add($"trainer.args.optimizer.args.betas must be two numbers in [0, 1), found {ov?.ToJsonString() ?? "null"}");
                                        break;
                                    default: errors.Add($"trainer.args.optimizer.args.{ok} is not supported (lr, weight_decay, eps, betas)"); break;
                                }
                            }
                            foreach (var ok in o.Select(kv => kv.Key)) if (ok is not ("name" or "args")) errors.Add($"trainer.args.optimizer.{ok} is not an optimizer field");
                        }
                        else errors.Add($"trainer.args.optimizer must be {{\"name\": \"AdamW\", \"args\": {{...}}}} (only AdamW is supported), found {v?.ToJsonString() ?? "null"}");
                        break;
                    case "lr_scheduler":
                        if (v is not null) errors.Add("trainer.args.lr_scheduler is not supported (use MdtDistillerOptions.LearningRateSchedule from code)");
                        break;
                    case "grad_clip":
                        if (v is null) options = options with { Clipping = null };
                        else if (v is JsonObject gc && gc["name"] is JsonValue gn && gn.GetValueKind() == JsonValueKind.String && gn.GetValue<string>() == "AdaptiveGradClipper")
                        {
                            var ga = gc["args"] as JsonObject ?? new JsonObject();
                            var clip = new GradientClipping();
                            foreach (var (gk, gv) in ga)
                            {
                                switch (gk)
                                {
                                    case "max_norm": clip = clip with { MaxNorm = gv is null ? null : Num("grad_clip.args.max_norm", gv, 0, 1e30) }; break;
                                    case "clip_percentile": clip = clip with { Percentile = Num("grad_clip.args.clip_percentile", gv, 0, 100) }; break;
                                    case "buffer_size": clip = clip with { BufferSize = (int)Int("grad_clip.args.buffer_size", gv, 1, 1 << 24) }; break;
                                    default: errors.Add($"trainer.args.grad_clip.args.{gk} is not an AdaptiveGradClipper argument"); break;
                                }
                            }
                            options = options with { Clipping = clip };
                        }
                        else errors.Add($"trainer.args.grad_clip must be null or an AdaptiveGradClipper (a fixed max-norm clip is not supported), found {v.ToJsonString()}");
                        break;
                    case "ema_rate":
                        if (Json.Number(v) is double er && er >= 0 && er < 1) options = options with { EmaRates = new[] { er } };
                        else if (Json.Numbers(v) is { } ers && ers.All(r => r >= 0 && r < 1)) options = options with { EmaRates = ers };
                        else errors.Add($"trainer.args.ema_rate must be a number or a list of numbers in [0, 1), found {v?.ToJsonString() ?? "null"}");
                        break;
                    case "fp16_mode":
                        if (v is JsonValue fm && fm.GetValueKind() == JsonValueKind.String && fm.GetValue<string>() == "inflat_all")
                            options = options with { Precision = TrainingPrecision.Fp32MasterWeights };
                        else errors.Add($"trainer.args.fp16_mode must be \"inflat_all\" (\"amp\" is not supported), found {v?.ToJsonString() ?? "null"}");
                        break;
                    case "fp16_scale_growth": options = options with { LossScaleGrowth = Num(key, v, 0, 1) }; break;
                    case "finetune_ckpt":
                        if (v is JsonObject fc)
                            foreach (var (fk, fv) in fc)
                            {
                                if (fk is not ("denoiser" or "teacher")) errors.Add($"trainer.args.finetune_ckpt.{fk} names no model of this config");
                                else if (fv is JsonValue fs && fs.GetValueKind() == JsonValueKind.String) finetune[fk] = fs.GetValue<string>();
                                else errors.Add($"trainer.args.finetune_ckpt.{fk} must be a checkpoint path, found {fv?.ToJsonString() ?? "null"}");
                            }
                        else if (v is not null) errors.Add($"trainer.args.finetune_ckpt must be an object (model → checkpoint), found {v.ToJsonString()}");
                        break;
                    case "i_log": options = options with { LogEvery = (int)Int(key, v, 1, int.MaxValue) }; break;
                    case "i_save": options = options with { CheckpointEvery = Int(key, v, 1, long.MaxValue / 2) }; break;
                    case "i_sample": sampleEvery = Int(key, v, 0, long.MaxValue / 2); break;
                    case "i_print" or "i_ddpcheck" or "prefetch_data" or "log_param_stats":
                        ignored.Add($"trainer.args.{key} (no effect here: progress is reported through IProgress, data is read synchronously)");
                        break;
                    case "elastic":
                        // null (TRELLIS's default) means no controller
                        try { elastic = v is null ? null : LinearMemoryControllerOptions.FromConfig(v, "trainer.args.elastic"); }
                        catch (InvalidDataException e) { errors.Add(e.Message.TrimEnd('.')); }
                        break;
                    case "p_uncond":
                        if (Num(key, v, 0, 1) > 0) errors.Add("trainer.args.p_uncond > 0 (condition dropout while distilling) is not supported; MDT-dist's configs use 0");
                        break;
                    case "t_schedule":
                        if (v is JsonObject ts && ts["name"] is JsonValue tsn && tsn.GetValueKind() == JsonValueKind.String && tsn.GetValue<string>() == "logitNormal")
                        {
                            var ta = ts["args"] as JsonObject ?? new JsonObject();
                            double mean = 0, std = 1;
                            foreach (var (tk, tv) in ta)
                            {
                                if (tk == "mean") mean = Num("t_schedule.args.mean", tv, -100, 100);
                                else if (tk == "std") std = Num("t_schedule.args.std", tv, 1e-6, 100);
                                else errors.Add($"trainer.args.t_schedule.args.{tk} is not a logitNormal argument (mean, std)");
                            }
                            settings = settings with { TimeSampler = new LogitNormalTimeSampler(mean, std) };
                        }
                        else errors.Add($"trainer.args.t_schedule must be {{\"name\": \"logitNormal\", \"args\": {{mean, std}}}}, found {v?.ToJsonString() ?? "null"}");
                        break;
                    case "sigma_min": settings = settings with { SigmaMin = Num(key, v, 0, 0.5) }; break;
                    case "distill_type":
                        var dt = v is JsonValue dv && dv.GetValueKind() == JsonValueKind.String ? dv.GetValue<string>() : null;
                        switch (dt)
                        {
                            case "discrete": settings = settings with { Mode = DistillationMode.Discrete }; break;
                            case "continuous": settings = settings with { Mode = DistillationMode.Continuous }; break;
                            case "cm": settings = settings with { Mode = DistillationMode.ConsistencyModel }; break;
                            default: errors.Add($"trainer.args.distill_type must be \"discrete\", \"continuous\" or \"cm\", found {v?.ToJsonString() ?? "null"}"); break;
                        }
                        break;
                    case "distill_interval": settings = settings with { Interval = Scalar(key, v, 1e-6, 0.5) }; break;
                    case "cfg_teacher_vm": settings = settings with { GuidanceVm = Scalar(key, v, 0, 1e4) }; break;
                    case "cfg_teacher_vd": settings = settings with { GuidanceVd = Scalar(key, v, 0, 1e4) }; break;
                    case "rescale_t": rescaleT = Num(key, v, 1e-6, 1e6); break;
                    case "multiphase": settings = settings with { Multiphase = (int)Int(key, v, 1, 1000) }; break;
                    case "lambda_vm": settings = settings with { LambdaVm = Num(key, v, 0, 1e6) }; break;
                    case "lambda_vd": settings = settings with { LambdaVd = Num(key, v, 0, 1e6) }; break;
                    case "d_norm": settings = settings with { DNorm = Bool(key, v) }; break;
                    case "image_cond_model":
                        if (v is JsonValue ic && ic.GetValueKind() == JsonValueKind.String) imageCond = ic.GetValue<string>();
                        else errors.Add($"trainer.args.image_cond_model must be a string, found {v?.ToJsonString() ?? "null"}");
                        break;
                    default:
                        errors.Add($"trainer.args.{key} is not a known MDT-dist / TRELLIS trainer argument");
                        break;
                }
            }
            if (maxSteps == 0 && !args.ContainsKey("max_steps")) errors.Add("trainer.args.max_steps is required");
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
