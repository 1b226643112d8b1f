using System.Text.Json.Nodes;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using MdtDist.Trellis.Data;
using Xunit;

namespace MdtDist.Trellis.Tests.Data;

public class TrellisTrainingConfigTests
{
    private static readonly string RunConfig = Path.Combine(AppContext.BaseDirectory, "TestData", "trellis_training_run", "config.json");

    /// <summary>The fixture is a config in MDT-dist's layout (the stage-1 recipe at tiny size).</summary>
    [Fact]
    public void MapsTheFixtureConfig()
    {
        var c = TrellisTrainingConfig.Load(RunConfig);
        Assert.Equal("SparseStructureFlowModel", c.Denoiser.Name);
        Assert.Equal(64, c.Denoiser.Args["model_channels"]!.GetValue<long>());
        Assert.Equal("SparseStructureFlowModel", c.Teacher.Name);
        Assert.Equal(TrellisLatentKind.SparseStructure, c.Dataset.Kind);
        Assert.Equal(TrellisConditionKind.Image, c.Dataset.Condition);
        Assert.Equal("ss_enc_conv3d_16l8_fp16", c.Dataset.LatentModel);
        Assert.Equal(4.5, c.Dataset.MinAestheticScore);
        Assert.Equal(100, c.MaxSteps);
        Assert.Equal(8, c.BatchSizePerRank);
        Assert.Equal(2, c.Trainer.BatchSplit);
        Assert.Equal(4e-8, c.Trainer.LearningRate);
        Assert.Equal(0.0, c.Trainer.WeightDecay);
        Assert.Equal(new[] { 0.9999 }, c.Trainer.EmaRates);
        Assert.Equal(TrainingPrecision.Fp32MasterWeights, c.Trainer.Precision);
        Assert.Equal(DistillationMode.Discrete, c.Objective.Mode);
        Assert.Equal(0.01, c.Objective.Interval);
        Assert.Equal(40.0, c.Objective.GuidanceVm);
        Assert.Equal(100.0, c.Objective.GuidanceVd);
        Assert.Equal(1e-5, c.Objective.SigmaMin);
        Assert.True(c.Objective.DNorm);
        Assert.Equal(1, c.Objective.Multiphase);
        var ts = Assert.IsType<LogitNormalTimeSampler>(c.Objective.TimeSampler);
        Assert.Equal("dinov2_vitl14_reg", c.ImageConditionModel);
        Assert.Empty(c.Ignored);
        _ = ts;
    }

    private static JsonObject StageTwo() => JsonNode.Parse("""
    {
      "models": {"denoiser": {"name": "ElasticSLatFlowModel", "args": {"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32, "num_blocks": 2, "num_heads": 4}}},
      "dataset": {"name": "ImageConditionedSLat", "args": {"latent_model": "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16", "min_aesthetic_score": 4.5, "max_num_voxels": 32768,
                  "image_size": 518, "normalization": {"mean": [0, 0, 0, 0, 0, 0, 0, 0], "std": [1, 2, 1, 1, 1, 1, 1, 1]}, "pretrained_slat_dec": "JeffreyXiang/TRELLIS-image-large/ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16"}},
      "trainer": {"name": "ImageConditionedSparseFlowMatchingCFGTrainer", "args": {
          "finetune_ckpt": {"denoiser": "JeffreyXiang/TRELLIS-image-large/ckpts/slat_flow_img_dit_L_64l8p2_fp16", "teacher": "JeffreyXiang/TRELLIS-image-large/ckpts/slat_flow_img_dit_L_64l8p2_fp16"},
          "max_steps": 1000, "batch_size_per_gpu": 8, "batch_split": 4,
          "optimizer": {"name": "AdamW", "args": {"lr": 1e-4, "weight_decay": 0.0}}, "ema_rate": [0.9999, 0.999],
          "fp16_mode": "inflat_all", "fp16_scale_growth": 0.001,
          "elastic": {"name": "LinearMemoryController", "args": {"target_ratio": 0.75, "max_mem_ratio_start": 0.5}},
          "grad_clip": {"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "clip_percentile": 95}},
          "i_log": 500, "i_sample": 10000, "i_save": 10000, "i_print": 1000, "p_uncond": 0.0,
          "t_schedule": {"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}}, "sigma_min": 1e-5,
          "distill_type": "discrete", "distill_interval": 0.01, "cfg_teacher_vm": 40.0, "cfg_teacher_vd": 100.0,
          "rescale_t": 1.0, "multiphase": 1, "lambda_vm": 1.0, "lambda_vd": 1.0, "d_norm": true, "image_cond_model": "dinov2_vitl14_reg"}}
    }
    """)!.AsObject();

    [Fact]
    public void MapsAStageTwoConfigAndReportsWhatItIgnores()
    {
        var c = TrellisTrainingConfig.FromJson(StageTwo(), "'slat.json'");
        Assert.Equal(TrellisLatentKind.StructuredLatent, c.Dataset.Kind);
        Assert.Equal(new[] { 0.0, 0, 0, 0, 0, 0, 0, 0 }, c.Dataset.Normalization!.Mean);
        Assert.Equal(4, c.Trainer.BatchSplit);
        Assert.Equal(new[] { 0.9999, 0.999 }, c.Trainer.EmaRates);
        Assert.Equal(1.0, c.Trainer.Clipping!.MaxNorm);
        Assert.Equal(95, c.Trainer.Clipping.Percentile);
        Assert.Equal(10000, c.Trainer.CheckpointEvery);
        Assert.Equal(500, c.Trainer.LogEvery);
        Assert.Equal(10000, c.SampleEvery);
        Assert.Equal("JeffreyXiang/TRELLIS-image-large/ckpts/slat_flow_img_dit_L_64l8p2_fp16", c.FinetuneCheckpoints["teacher"]);
        Assert.DoesNotContain(c.Ignored, i => i.StartsWith("trainer.args.elastic", StringComparison.Ordinal));
        Assert.Equal((0.75, 0.5), (c.Elastic!.TargetRatio, c.Elastic.MaxMemRatioStart));
        Assert.Contains(c.Ignored, i => i.StartsWith("trainer.args.i_print", StringComparison.Ordinal));
        Assert.Contains(c.Ignored, i => i.StartsWith("dataset.args.pretrained_slat_dec", StringComparison.Ordinal));
        // batch_size instead of batch_size_per_gpu, spread over 2 processes.
        var g = StageTwo();
        var ta = g["trainer"]!["args"]!.AsObject();
        ta.Remove("batch_size_per_gpu");
        ta["batch_size"] = 16;
        Assert.Equal(8, TrellisTrainingConfig.FromJson(g, "x", worldSize: 2).BatchSizePerRank);
    }

    [Fact]
    public void UnsupportedAndUnknownKeysAreAllReportedByName()
    {
        var c = StageTwo();
        var ta = c["trainer"]!["args"]!.AsObject();
        ta["cfg_teacher_vm"] = new JsonArray(20, 40);
        ta["p_uncond"] = 0.1;
        ta["optimizer"] = JsonNode.Parse("""{"name": "SGD", "args": {"lr": 0.1}}""");
        ta["d_norm"] = "yes";
        ta["warmup_steps"] = 10;
        ta["distill_type"] = "magic";
        c["extra"] = 1;
        var e = Assert.Throws<InvalidDataException>(() => TrellisTrainingConfig.FromJson(c, "'bad.json'"));
        foreach (var s in new[] { "'bad.json'", "'trainer.args.cfg_teacher_vm': a list", "'trainer.args.p_uncond'", "only AdamW",
                     "'trainer.args.d_norm' = \"yes\" is not a boolean", "'trainer.args.warmup_steps'", "'trainer.args.distill_type'", "'extra'" })
            Assert.Contains(s, e.Message);
        Assert.Throws<FileNotFoundException>(() => TrellisTrainingConfig.Load(Path.Combine(Path.GetTempPath(), "no-such-config.json")));
    }

    [Fact]
    public void NestedKeysAndRangesAreReportedWithTheirPath()
    {
        var c = StageTwo();
        var ta = c["trainer"]!["args"]!.AsObject();
        ta["optimizer"] = JsonNode.Parse("""{"name": "AdamW", "args": {"lr": 20, "momentum": 0.9}}""");
        ta["ema_rate"] = new JsonArray(0.5, 1.5);
        ta["i_log"] = 0;
        c["dataset"]!["args"]!["normalization"] = JsonNode.Parse("""{"mean": [0, 0], "std": [1]}""");
        var e = Assert.Throws<InvalidDataException>(() => TrellisTrainingConfig.FromJson(c, "'nested.json'"));
        foreach (var s in new[] { "'trainer.args.optimizer.args.lr' = 20 is not in [0, 10]", "'trainer.args.optimizer.args.momentum'",
                     "'trainer.args.ema_rate'", "'trainer.args.i_log' = 0", "'dataset.args.normalization'" })
            Assert.Contains(s, e.Message);
    }
}
