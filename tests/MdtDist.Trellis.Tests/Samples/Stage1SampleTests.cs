using System.Text;
using MdtDist.Trellis.Checkpoints;
using Stage1Structure;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Samples;

/// <summary>The samples/Stage1Structure core routine on tiny random networks.</summary>
public sealed class Stage1SampleTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mdtdist-s1");

    public void Dispose() => _dir.Delete(true);

    private static (long Count, string Header) ReadPly(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var text = Encoding.ASCII.GetString(bytes, 0, Math.Min(bytes.Length, 400));
        int end = text.IndexOf("end_header\n", StringComparison.Ordinal) + "end_header\n".Length;
        var header = text[..end];
        long n = long.Parse(header.Split('\n').Single(l => l.StartsWith("element vertex ")).Split(' ')[2]);
        Assert.Equal(end + n * 12, bytes.Length);
        return (n, header);
    }

    [Fact]
    public void RandomTinyRunWritesTheOccupiedVoxelsAsPly()
    {
        var output = Path.Combine(_dir.FullName, "tiny.ply");
        using var result = Stage1StructureApp.Sample(new Stage1Options { RandomTiny = true, Steps = 2, Output = output }, TextWriter.Null);
        Assert.Equal(new[] { output }, result.Files);
        // 2 steps of t ∈ {1, 0.6}: both inside the guidance interval [0.5, 1] → 2 evaluations each.
        Assert.Equal(4, result.Evaluations);
        var (n, header) = ReadPly(output);
        Assert.Equal(result.Coords.shape[0], n);
        Assert.True(n > 0 && n < 32 * 32 * 32);
        Assert.Contains("format binary_little_endian 1.0", header);
        Assert.True((result.Coords[.., 1..] >= 0).all().item<bool>() && (result.Coords[.., 1..] < 32).all().item<bool>());
    }

    [Fact]
    public void LoadsACheckpointFolderLaidOutLikeTheRelease()
    {
        // A TRELLIS-image-large-like folder with tiny fp16 checkpoints under the released names and a pipeline.json.
        var (flow, decoder) = Stage1StructureApp.RandomTinyNetworks(3, ScalarType.Float32, null);
        using (flow)
        using (decoder)
        {
            TrellisCheckpoint.Save(flow, Path.Combine(_dir.FullName, "ckpts", Stage1StructureApp.FlowName), ScalarType.Float16);
            TrellisCheckpoint.Save(decoder, Path.Combine(_dir.FullName, "ckpts", Stage1StructureApp.DecoderName), ScalarType.Float16);
        }
        File.WriteAllText(Path.Combine(_dir.FullName, "pipeline.json"), """
            {"name": "TrellisImageTo3DPipeline", "args": {
              "models": {"sparse_structure_flow_model": "ckpts/FLOW", "sparse_structure_decoder": "ckpts/DEC"},
              "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05},
                "params": {"steps": 3, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}}}
            """.Replace("FLOW", Stage1StructureApp.FlowName).Replace("DEC", Stage1StructureApp.DecoderName));
        using (var cond = torch.randn(new long[] { 1, 6, 16 }, generator: new Generator(60)))
            MdtDist.Core.IO.SafeTensors.Save(Path.Combine(_dir.FullName, "cond.safetensors"), new Dictionary<string, Tensor> { ["cond"] = cond });
        var output = Path.Combine(_dir.FullName, "out", "s.ply");
        var log = new StringWriter();
        int rc = Stage1StructureApp.Run(new[] { _dir.FullName, "--cond", Path.Combine(_dir.FullName, "cond.safetensors"), "--batch", "2", "--out", output }, log);
        Assert.True(rc == 0, log.ToString());
        // pipeline.json's 3 steps: t = 1, 0.857, 0.6 are all in [0.5, 1] → "step 3/3" and 2 files.
        Assert.Contains("step 3/3", log.ToString());
        Assert.True(ReadPly(Path.Combine(_dir.FullName, "out", "s_0.ply")).Count > 0);
        Assert.True(ReadPly(Path.Combine(_dir.FullName, "out", "s_1.ply")).Count > 0);
    }

    [Fact]
    public void WithoutAPathItExplainsWhatToDownload()
    {
        var log = new StringWriter();
        Assert.Equal(1, Stage1StructureApp.Run(Array.Empty<string>(), log));
        Assert.Contains("JeffreyXiang/TRELLIS-image-large", log.ToString());
        Assert.Contains("ckpts/ss_flow_img_dit_L_16l8_fp16.safetensors", log.ToString());
        Assert.Contains("ckpts/ss_dec_conv3d_16l8_fp16.json", log.ToString());

        var missing = new StringWriter();
        Assert.Equal(3, Stage1StructureApp.Run(new[] { _dir.FullName }, missing));
        Assert.Contains("ss_flow_img_dit_L_16l8_fp16.json", missing.ToString());
    }

    [Fact]
    public void BadCommandLinesGetTheParsersMessageNotAStackTrace()
    {
        // System.CommandLine's convention: exit code 1 and a message naming the option and the value; nothing written.
        foreach (var (args, expected) in new[]
                 {
                     (new[] { "--random-tiny", "--steps", "zero" }, "--steps needs an integer >= 1, got 'zero'"),
                     (new[] { "--random-tiny", "--batch", "0" }, "--batch needs an integer >= 1, got '0'"),
                     (new[] { "--random-tiny", "--cfg-interval", "0.5" }, "--cfg-interval needs LO,HI"),
                     (new[] { "--random-tiny", "--dtype", "float8" }, "float8"),
                     (new[] { "--random-tiny", "--bogus" }, "--bogus"),
                     (new[] { "--random-tiny", "--seed" }, "--seed"),
                 })
        {
            var log = new StringWriter();
            var output = Path.Combine(_dir.FullName, "never.ply");
            Assert.Equal(1, Stage1StructureApp.Run(args.Append("--out").Append(output).ToArray(), log));
            Assert.Contains(expected, log.ToString());
            Assert.DoesNotContain("   at ", log.ToString());
            Assert.False(File.Exists(output));
        }
        var help = new StringWriter();
        Assert.Equal(0, Stage1StructureApp.Run(new[] { "--help" }, help));
        Assert.Contains("--cfg-interval", help.ToString());
    }

    [Fact]
    public void TheRunEndsWithASummaryTable()
    {
        var log = new StringWriter();
        var output = Path.Combine(_dir.FullName, "t.ply");
        Assert.Equal(0, Stage1StructureApp.Run(new[] { "--random-tiny", "--steps", "1", "--batch", "2", "--out", output }, log));
        var text = log.ToString();
        Assert.Contains("occupied voxels", text);
        Assert.Contains("2 flow evaluations", text);   // 1 step at t = 1, inside the guidance interval: 2 evaluations
        Assert.Contains("t_1.ply", text);
    }
}
