using System.Diagnostics;
using System.Text.Json.Nodes;
using DistillTrellis;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Tests.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using MdtDist.Trellis.Tests.Data;

namespace MdtDist.Trellis.Tests.Samples;

/// <summary>
/// The DistillTrellis command end to end on the fixture dataset with tiny random TRELLIS networks (16³ structure latents
/// as the fixture's, 32-wide conditions from a random tiny DINOv2): killed with SIGKILL mid-run, resumed, and compared
/// bit for bit with an uninterrupted run; the exported student runs in the pipeline.
/// </summary>
public class DistillTrellisCommandTests
{
    private static readonly Dictionary<string, string> Configs = new()
    {
        ["ss_flow"] = """{"name": "SparseStructureFlowModel", "args": {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 32, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 4, "pe_mode": "ape", "qk_rms_norm": true}}""",
        ["ss_dec"] = TinyPipeline.Configs["ss_dec"],
        ["slat_flow"] = TinyPipeline.Configs["slat_flow"].Replace("\"resolution\": 16", "\"resolution\": 64").Replace("\"cond_channels\": 16", "\"cond_channels\": 32"),
        ["slat_dec_gs"] = TinyPipeline.Configs["slat_dec_gs"].Replace("\"resolution\": 16", "\"resolution\": 64"),
    };

    private static string TeacherFolder()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-teacher-").FullName;
        long seed = 40;
        foreach (var (key, json) in Configs)
        {
            var node = JsonNode.Parse(json)!.AsObject();
            var m = TinyPipeline.Randomize(TrellisCheckpoint.Build(new TrellisModelConfig(node["name"]!.GetValue<string>(), node["args"]!.AsObject())), seed++);
            Directory.CreateDirectory(Path.Combine(dir, "ckpts"));
            File.WriteAllText(Path.Combine(dir, "ckpts", key + ".json"), json);
            SafeTensors.Save(Path.Combine(dir, "ckpts", key + ".safetensors"), m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
            m.Dispose();
        }
        File.WriteAllText(Path.Combine(dir, "pipeline.json"), """
            {"name": "TrellisImageTo3DPipeline", "args": {
              "models": {"sparse_structure_decoder": "ckpts/ss_dec", "sparse_structure_flow_model": "ckpts/ss_flow", "slat_decoder_gs": "ckpts/slat_dec_gs", "slat_flow_model": "ckpts/slat_flow"},
              "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05}, "params": {"steps": 2, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
              "slat_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05}, "params": {"steps": 2, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
              "slat_normalization": {"mean": [0, 0, 0, 0, 0, 0, 0, 0], "std": [1, 1, 1, 1, 1, 1, 1, 1]},
              "image_cond_model": "dinov2_vitl14_reg"}}
            """);
        return dir;
    }

    /// <summary>The fixture config (MDT-dist's stage-1 recipe) with this test's tiny sizes.</summary>
    private static string Config(string dir)
    {
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "TestData", "trellis_training_run", "config.json")))!.AsObject();
        var ss = JsonNode.Parse(Configs["ss_flow"])!.AsObject();
        cfg["models"]!["denoiser"] = ss.DeepClone();
        cfg["models"]!["teacher"] = ss.DeepClone();
        cfg["dataset"]!["args"]!["image_size"] = 28;
        var t = cfg["trainer"]!["args"]!.AsObject();
        t["max_steps"] = 6;
        t["batch_size_per_gpu"] = 2;
        t["batch_split"] = 2;
        t["optimizer"]!["args"]!["lr"] = 1e-3;
        t["i_save"] = 2;
        t["i_sample"] = 6;
        t["i_log"] = 1;
        var path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, cfg.ToJsonString());
        return path;
    }

    private static Process Start(string config, string data, string teacher, string output, params string[] extra)
    {
        var exe = Path.Combine(AppContext.BaseDirectory, "DistillTrellis.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { exe, "--config", config, "--data", data, "--teacher", teacher, "--out", output, "--random-tiny-dinov2", "--seed", "5" }.Concat(extra))
            psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        return Process.Start(psi)!;
    }

    private static (int Code, string Output) RunToEnd(string config, string data, string teacher, string output, params string[] extra)
    {
        using var p = Start(config, data, teacher, output, extra);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(true); throw new TimeoutException("DistillTrellis did not finish in 10 minutes."); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void KilledRunResumesBitExactlyAndTheStudentRunsInThePipeline()
    {
        var work = Directory.CreateTempSubdirectory("mdtdist-distill-cmd-").FullName;
        try
        {
            var teacher = TeacherFolder();
            var config = Config(work);
            var data = TrellisDatasetTests.Root;
            var reference = Path.Combine(work, "reference");
            var (code, log) = RunToEnd(config, data, teacher, reference);
            Assert.True(code == 0, log);

            // The killed run: the command sends SIGKILL to itself once its step-2 checkpoint is written (a hidden
            // testing option), so where the kill lands does not depend on the machine's speed; then the same command again.
            var killed = Path.Combine(work, "killed");
            (code, log) = RunToEnd(config, data, teacher, killed, "--simulate-kill-after-step", "2");
            Assert.True(code == 128 + 9, $"expected death by SIGKILL (exit 137), got {code}: {log}");
            Assert.True(Directory.Exists(Path.Combine(killed, "state", "step-000000002")), log);
            Assert.False(File.Exists(Path.Combine(killed, "export", "ckpts", "ss_flow_mdt.json")), "the run was killed before it finished");
            (code, log) = RunToEnd(config, data, teacher, killed);
            Assert.True(code == 0, log);
            Assert.Contains("Resumed", log);

            // Bit-exact: the exported EMA student and the TRELLIS-layout checkpoints of both runs are identical.
            foreach (var rel in new[] { "export/ckpts/ss_flow_mdt.safetensors", "ckpts/denoiser_step0000006.safetensors", "ckpts/denoiser_ema0.9999_step0000006.safetensors" })
                Assert.True(File.ReadAllBytes(Path.Combine(reference, rel)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(killed, rel))), rel);
            Assert.True(File.Exists(Path.Combine(reference, "ckpts", "denoiser_step0000002.json")));
            Assert.True(File.Exists(Path.Combine(reference, "samples", "step0000006.ply")), log);

            // The exported student loads straight into the pipeline.
            var pipeline = TrellisPipeline.FromFolder(teacher)
                .WithStructureFlow(TrellisCheckpoint.Load<SparseStructureFlowModel>(Path.Combine(reference, "export", "ckpts", "ss_flow_mdt")), StageSampler.Student(1));
            using var cond = torch.randn(new long[] { 1, 9, 32 }, generator: new Generator(1));
            using var r = pipeline.Run(cond, new TrellisRunOptions { Seed = 1 });
            Assert.Equal(1, r.StructureEvaluations);
        }
        finally { Directory.Delete(work, true); }
    }

    [Fact]
    public void BadInputsAreNamedAndNothingIsWritten()
    {
        var work = Directory.CreateTempSubdirectory("mdtdist-distill-bad-").FullName;
        try
        {
            var teacher = TeacherFolder();
            var config = Config(work);
            var output = Path.Combine(work, "out");
            DistillTrellisOptions O(string cfg, string data) => new() { Config = cfg, Data = new[] { data }, Teacher = teacher, Out = output, RandomTinyDinov2 = true };

            var cfg = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
            cfg["trainer"]!["args"]!["warmup"] = 3;
            var bad = Path.Combine(work, "bad.json");
            File.WriteAllText(bad, cfg.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => DistillTrellisApp.Run(O(bad, TrellisDatasetTests.Root)));
            Assert.Contains("trainer.args.warmup", e.Message);

            var noMeta = Directory.CreateTempSubdirectory("mdtdist-nometa-").FullName;
            var f = Assert.Throws<FileNotFoundException>(() => DistillTrellisApp.Run(O(config, noMeta)));
            Assert.Contains("metadata.csv", f.Message);
            Directory.Delete(noMeta);
            Assert.False(Directory.Exists(output), "nothing is written before the inputs are checked");

            // A view without alpha fails with its name, and an existing run folder keeps what it had.
            var copy = Path.Combine(work, "data");
            TrellisDatasetTests.CopyDir(TrellisDatasetTests.Root, copy);
            foreach (var png in Directory.GetFiles(Path.Combine(copy, "renders_cond"), "*.png", SearchOption.AllDirectories))
            {
                using var img = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(png);
                SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, png);
            }
            Directory.CreateDirectory(output);
            File.WriteAllText(Path.Combine(output, "keep.txt"), "mine");
            var v = Assert.Throws<InvalidDataException>(() => DistillTrellisApp.Run(O(config, copy)));
            Assert.Contains(".png", v.Message);
            Assert.Equal("mine", File.ReadAllText(Path.Combine(output, "keep.txt")));
        }
        finally { Directory.Delete(work, true); }
    }
}
