using System.Text.Json.Nodes;
using DistillTrellis;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Pipeline;
using Microsoft.Extensions.Logging;
using TorchSharp;
using Xunit;
using MdtDist.Trellis.Tests.Data;
using MdtDist.TestSupport;

namespace MdtDist.Trellis.Tests.Samples;

/// <summary>
/// DistillTrellis on MDT-dist's stage-2 recipe with <c>trainer.args.elastic</c> (TRELLIS's LinearMemoryController) and an
/// <c>ElasticSLatFlowModel</c> student: the controller steers the student's checkpointed blocks every micro-batch, and
/// the student trained is byte-identical to the one trained without the controller.
/// </summary>
public class DistillTrellisElasticTests
{
    private const string Flow = """{"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 32, "num_blocks": 3, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [8], "pe_mode": "ape", "qk_rms_norm": true}""";

    private static string Config(string dir, bool elastic)
    {
        var cfg = JsonNode.Parse("""
            {
              "models": {"denoiser": {"name": "ElasticSLatFlowModel", "args": FLOW}, "teacher": {"name": "SLatFlowModel", "args": FLOW}},
              "dataset": {"name": "ImageConditionedSLat", "args": {"latent_model": "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16", "min_aesthetic_score": 4.5,
                          "max_num_voxels": 32768, "image_size": 28}},
              "trainer": {"name": "ImageConditionedSparseFlowMDTCFGTrainer", "args": {
                  "finetune_ckpt": {"teacher": "ckpts/slat_flow"},
                  "max_steps": 2, "batch_size_per_gpu": 2, "batch_split": 2,
                  "optimizer": {"name": "AdamW", "args": {"lr": 1e-3, "weight_decay": 0.0}}, "ema_rate": [0.9999],
                  "fp16_mode": "inflat_all", "i_log": 1, "i_save": 2, "p_uncond": 0.0,
                  "elastic": {"name": "LinearMemoryController", "args": {"target_ratio": 0.75, "max_mem_ratio_start": 0.5}},
                  "t_schedule": {"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}}, "sigma_min": 1e-5,
                  "distill_type": "discrete", "distill_interval": 0.01, "cfg_teacher_vm": 40.0, "cfg_teacher_vd": 100.0,
                  "rescale_t": 1.0, "multiphase": 1, "lambda_vm": 1.0, "lambda_vd": 1.0, "d_norm": true, "image_cond_model": "dinov2_vitl14_reg"}}
            }
            """.Replace("FLOW", Flow, StringComparison.Ordinal))!.AsObject();
        if (!elastic) cfg["trainer"]!["args"]!.AsObject().Remove("elastic");
        var path = Path.Combine(dir, elastic ? "elastic.json" : "plain.json");
        File.WriteAllText(path, cfg.ToJsonString());
        return path;
    }

    [Fact]
    public void AnElasticConfigTrainsTheSameStudentUnderTheController()
    {
        var work = Directory.CreateTempSubdirectory("mdtdist-distill-elastic-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(work, "teacher", "ckpts"));
            var teacher = RandomTinyTrellis.Randomize(TrellisCheckpoint.Build(new TrellisModelConfig("SLatFlowModel", JsonNode.Parse(Flow)!.AsObject())), 60);
            File.WriteAllText(Path.Combine(work, "teacher", "ckpts", "slat_flow.json"), $$"""{"name": "SLatFlowModel", "args": {{Flow}}}""");
            SafeTensors.Save(Path.Combine(work, "teacher", "ckpts", "slat_flow.safetensors"), teacher.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));

            DistillTrellisResult Run(bool elastic, ListLogger log) => DistillTrellisApp.Run(new DistillTrellisOptions
            {
                Config = Config(work, elastic), Data = new[] { TrellisDatasetTests.Root }, Teacher = Path.Combine(work, "teacher"),
                Out = Path.Combine(work, elastic ? "elastic" : "plain"), RandomTinyDinov2 = true, Seed = 5,
            }, logger: log);

            var logE = new ListLogger();
            var withController = Run(true, logE);
            Assert.Equal(2, withController.Step);
            // The controller ran: a record per step with the micro-batch's voxels, and its fit saved beside the trainer state.
            Assert.Contains(logE.Lines, l => l.StartsWith("Elastic memory at step 2: ratio", StringComparison.Ordinal));
            // Before its first fit the controller draws ratios below max_mem_ratio_start = 0.5: blocks were recomputed.
            Assert.DoesNotContain(logE.Lines, l => l.StartsWith("Elastic memory", StringComparison.Ordinal) && l.Contains("ratio 1.000", StringComparison.Ordinal));
            Assert.DoesNotContain(logE.Lines, l => l.Contains("accepted without effect", StringComparison.Ordinal) && l.Contains("elastic", StringComparison.Ordinal));
            Assert.True(File.Exists(Path.Combine(work, "elastic", "state", "elastic_controller.json")));
            Assert.Equal("ElasticSLatFlowModel", TrellisCheckpoint.ReadConfig(withController.ExportedStudent).Name);

            var without = Run(false, new ListLogger());
            Assert.True(File.ReadAllBytes(withController.ExportedStudent + ".safetensors").AsSpan()
                .SequenceEqual(File.ReadAllBytes(without.ExportedStudent + ".safetensors")), "the elastic run trained another student");

            // A second run of the elastic config resumes (and reads the controller's saved fit).
            var again = Run(true, new ListLogger());
            Assert.True(again.Resumed);
        }
        finally { Directory.Delete(work, true); }
    }
}
