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
    }
}
