using FewStepSampling;
using Xunit;

namespace MdtDist.Core.Tests.Samples;

/// <summary>The 2-D quickstart (samples/FewStepSampling) through its command line, on a small budget.</summary>
public class FewStepSamplingTests
{
    [Fact]
    public void TheQuickstartPrintsItsTableAndTheExactFlowBeatsOneTeacherStep()
    {
        var log = new StringWriter();
        Assert.Equal(0, FewStepSamplingApp.Run(new[] { "--steps", "3", "--teacher-steps", "300", "--eval-samples", "1024" }, log));
        var text = log.ToString();
        Assert.Contains("MDT-dist student (EMA), Euler 1", text);
        Assert.Contains("data vs data", text);
        Assert.Contains("distillation: 3 steps", text);

        var r = FewStepSamplingApp.Execute(new FewStepOptions { DistillSteps = 3, TeacherSteps = 300, EvalSamples = 1024 }, TextWriter.Null);
        var byName = r.Rows.ToDictionary(x => x.Name);
        Assert.Equal(1, byName["MDT-dist student (EMA), Euler 1"].Evaluations);
        Assert.Equal(25, byName["exact velocity, Euler 25 (TRELLIS s=3)"].Evaluations);
        // One Euler step from t = 1 maps every noise point to x - v(x, 1), the posterior mean given pure noise, which
        // for this symmetric mixture is near the origin: the four modes ±1 apart collapse into one blob, an SW2 of the
        // order of the modes' spread (~0.5). 25 exact steps land within a few hundredths of the data (floor ~0.02 for
        // 1024 points). A factor 3 between them leaves a wide margin on either side.
        Assert.True(byName["exact velocity, Euler 25 (TRELLIS s=3)"].SlicedWasserstein * 3 < byName["teacher MLP, Euler 1"].SlicedWasserstein,
            string.Join("; ", r.Rows));
        Assert.True(r.Floor < byName["teacher MLP, Euler 1"].SlicedWasserstein);
    }

    [Fact]
    public void BadValuesGetTheParsersMessageAndExitCodeOne()
    {
        foreach (var (args, expected) in new[]
                 {
                     (new[] { "--steps", "many" }, "--steps needs an integer >= 1, got 'many'"),
                     (new[] { "--eval-samples", "4" }, "--eval-samples needs an integer >= 16, got '4'"),
                     (new[] { "--frobnicate" }, "--frobnicate"),
                 })
        {
            var log = new StringWriter();
            Assert.Equal(1, FewStepSamplingApp.Run(args, log));
            Assert.Contains(expected, log.ToString());
            Assert.DoesNotContain("   at ", log.ToString());
        }
    }
}
