using FewStepSampling;
using Xunit;

namespace MdtDist.Core.Tests.Samples;

/// <summary>The 2-D quickstart (samples/FewStepSampling) through its command line, on a small budget.</summary>
public class FewStepSamplingTests
{
    [Fact]
    public void TheCommandLinePrintsTheResultsTable()
    {
        var log = new StringWriter();
        Assert.Equal(0, FewStepSamplingApp.Run(new[] { "--steps", "1", "--teacher-steps", "1", "--eval-samples", "16" }, log));
        var text = log.ToString();
        Assert.Contains("MDT-dist student (EMA), Euler 1", text);
        Assert.Contains("data vs data", text);
        Assert.Contains("distillation: 1 steps", text);
    }

    [Fact]
    public void TheExactFlowReachesTheFloorAndOneStepDoesNot()
    {
        var r = FewStepSamplingApp.Execute(new FewStepOptions { DistillSteps = 3, TeacherSteps = 300, EvalSamples = 1024 }, TextWriter.Null);
        var byName = r.Rows.ToDictionary(x => x.Name);
        Assert.Equal(1, byName["MDT-dist student (EMA), Euler 1"].Evaluations);
        Assert.Equal(25, byName["exact velocity, Euler 25 (TRELLIS s=3)"].Evaluations);
        double exact = byName["exact velocity, Euler 25 (TRELLIS s=3)"].SlicedWasserstein, oneStep = byName["teacher MLP, Euler 1"].SlicedWasserstein;
        // 25 exact Euler steps sample the mixture up to a small discretisation error, so their distance to the data is
        // that of a second data set of the same size (the floor, ~0.18 at 1024 points; measured 0.15): below 1.5x the
        // floor. One Euler step from t = 1 maps every noise point to x - v(x, 1) = E[x0], the mixture's mean (the
        // origin): the four modes at (+-1, +-1) collapse into one blob, a distance of the order of the modes' radius
        // (measured 0.94), above 3x the floor. Both margins exceed the spread of the estimate by far; the draws are seeded.
        Assert.True(exact < 1.5 * r.Floor, string.Join("; ", r.Rows) + $"; floor {r.Floor}");
        Assert.True(oneStep > 3 * r.Floor, string.Join("; ", r.Rows) + $"; floor {r.Floor}");
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
