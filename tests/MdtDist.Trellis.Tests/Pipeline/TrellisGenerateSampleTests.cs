using MdtDist.Trellis.Representations;
using TrellisGenerate;
using Xunit;

namespace MdtDist.Trellis.Tests.Pipeline;

public class TrellisGenerateSampleTests
{
    [Fact]
    public void TheSampleRunsTheWholePipelineAndWritesReadablePlyFiles()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-").FullName;
        var log = new StringWriter();
        int rc = TrellisGenerateApp.Run(new[] { "--random-tiny", "--samples", "2", "--ss-steps", "2", "--slat-steps", "1", "--out", Path.Combine(dir, "t") }, log);
        Assert.True(rc == 0, log.ToString());
        Assert.Contains("stage 1: 2 steps", log.ToString());
        // the Spectre.Console summary table: stage 1 with 2 guided steps inside [0.5, 1] costs 2 x 2 = 4 evaluations
        Assert.Matches(@"sparse structure\s*│\s*4\s*│", log.ToString());
        foreach (var i in new[] { 0, 1 })
        {
            var ply = GaussianPly.Read(Path.Combine(dir, $"t_{i}.ply"));
            using var table = ply.ToTensor();
            Assert.Equal(17, table.shape[1]);
            Assert.True(table.shape[0] > 0);
        }
    }

    [Fact]
    public void WithoutArgumentsItExplainsWhatToDownloadAndABadFolderIsAClearError()
    {
        var log = new StringWriter();
        Assert.Equal(1, TrellisGenerateApp.Run(Array.Empty<string>(), log));
        Assert.Contains("huggingface-cli download JeffreyXiang/TRELLIS-image-large", log.ToString());
        var log2 = new StringWriter();
        Assert.Equal(3, TrellisGenerateApp.Run(new[] { "/nonexistent/TRELLIS" }, log2));
        Assert.Contains("pipeline.json", log2.ToString());
        // System.CommandLine: --help lists the options; a malformed value is a parse error, not a crash
        var help = new StringWriter();
        Assert.Equal(0, TrellisGenerateApp.Run(new[] { "--help" }, help));
        Assert.Contains("--slat-steps", help.ToString());
        var bad = new StringWriter();
        Assert.NotEqual(0, TrellisGenerateApp.Run(new[] { "--random-tiny", "--samples", "two" }, bad));
        Assert.Contains("two", bad.ToString());
    }
}
