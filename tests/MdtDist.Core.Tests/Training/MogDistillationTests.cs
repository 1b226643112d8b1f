using MdtDist.TestSupport;
using System.Diagnostics;
using MdtDist.Core.Distillation;
using MdtDist.Core.Evaluation;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Core.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

/// <summary>
/// Distillation works, measured, on a problem with a known answer.
/// <list type="bullet">
/// <item>Data: a 2-D mixture of four Gaussians (means (±1, ±1), std 0.2) under TRELLIS's path; its exact marginal
/// velocity is <see cref="GaussianMixtureFlow"/>.</item>
/// <item>Teacher: a small MLP flow (3×64 SiLU) fitted in the test to that exact velocity (1500 regression steps).</item>
/// <item>Student: a deep copy of the teacher (<see cref="MdtDistiller.FromTeacher"/>), distilled with MDT-dist
/// (VM + VD, discrete Δ = 0.01, no d-norm — in 2-D a per-sample norm over two numbers would reduce dv/dt to a
/// direction — no guidance since the model is unconditional, uniform training times, AdamW 1e-3, 2000 steps of 256
/// samples); the EMA (0.99) weights are evaluated, as MDT-dist releases EMA weights.</item>
/// <item>Metric: sliced Wasserstein-1 distance (64 evenly spaced directions) between 4096 samples and 4096 fresh data
/// samples; the two-sample floor (data vs data) is printed too. All seeds fixed; float32; one thread.</item>
/// <item>Claims: the student's 1-step SW1 is at least 3× smaller than the teacher's 1-step Euler, and at most 1.5× the
/// teacher's 25-step Euler (uniform grid).</item>
/// </list>
/// Measured when written (float32, 1 thread): teacher 1-step 0.892, teacher 25-step 0.035, student 1-step (EMA) 0.035,
/// two-sample floor 0.028; about 12 s alone. With other seeds the student/teacher-25 ratio was 0.91–1.08.
/// </summary>
public class MogDistillationTests(ITestOutputHelper output)
{
    private static readonly double[,] Means = { { 1.0, 1.0 }, { -1.0, 1.0 }, { 1.0, -1.0 }, { -1.0, -1.0 } };
    private const double Std = 0.2;
    private const int Hidden = 64, Layers = 3, FitSteps = 1500, DistillSteps = 2000, Batch = 256, EvalCount = 4096;

    [Fact]
    public void DistilledOneStepStudentBeatsTeacherOneStepAndMatchesTeacherTwentyFiveSteps()
    {
        var watch = Stopwatch.StartNew();
        int threads = torch.get_num_threads();
        torch.set_num_threads(1);
        try
        {
            Run(watch);
        }
        finally
        {
            torch.set_num_threads(threads);
        }
    }

    private void Run(Stopwatch watch)
    {
        var mog = new GaussianMixtureFlow(Means, Std);

        // 1. Teacher: regression of an MLP onto the exact marginal velocity (deterministic target, no FM noise).
        var teacher = new MlpFlow(2, Hidden, Layers, seed: 1);
        using (var opt = torch.optim.Adam(teacher.Module.parameters(), 2e-3))
        using (var g = new Generator(2))
        {
            for (int i = 0; i < FitSteps; i++)
            {
                using var scope = torch.NewDisposeScope();
                var x0 = Latent.Dense(mog.SampleData(512, g));
                var eps = torch.randn(new long[] { 512, 2 }, generator: g);
                var t = torch.rand(new long[] { 512 }, generator: g);
                var xt = x0.With(RectifiedFlowPath.Trellis.Interpolate(x0, eps, t));
                opt.zero_grad();
                var loss = (teacher.Velocity(xt, t, null) - mog.Velocity(xt, t, null)).square().mean();
                loss.backward();
                opt.step();
            }
        }
        output.WriteLine($"teacher fitted in {watch.Elapsed.TotalSeconds:F1} s");

        // 2. Distil a copy of it.
        var objective = MdtDistObjective.Create(new MdtDistSettings
        {
            Mode = DistillationMode.Discrete, DNorm = false, GuidanceVm = 0, GuidanceVd = 0, TimeSampler = UniformTimeSampler.Instance,
        });
        var data = new DelegateDataSource(step =>
        {
            using var g = new Generator((ulong)(10_000 + step));
            return new DistillationBatch(Latent.Dense(mog.SampleData(Batch, g)));
        });
        var options = new MdtDistillerOptions
        {
            LearningRate = 1e-3, Seed = 3, EmaRates = new[] { 0.99 }, Clipping = new GradientClipping(MaxNorm: 10.0), LogEvery = 0,
        };
        using var distiller = MdtDistiller.FromTeacher(teacher, () => new MlpFlow(2, Hidden, Layers, seed: 4), objective, options);
        distiller.Train(data, DistillSteps, new SyncProgress<DistillationProgress>(p =>
        {
            if (p.Step % 500 == 0) output.WriteLine($"step {p.Step}: loss {p.Loss:G4} (vm {p.LossVm:G4}, vd {p.LossVd:G4}), grad norm {p.GradNorm:G3}");
        }));
        Assert.Equal(0, distiller.SkippedSteps);
        var student = new MlpFlow(2, Hidden, Layers, seed: 5);
        distiller.CopyEmaTo(student.Module);
        output.WriteLine($"distilled in {watch.Elapsed.TotalSeconds:F1} s");

        // 3. Measure.
        using var scope2 = torch.NewDisposeScope();
        using var gEval = new Generator(77);
        var reference = mog.SampleData(EvalCount, gEval);
        var floorSet = mog.SampleData(EvalCount, gEval);
        var noise = Latent.Dense(torch.randn(new long[] { EvalCount, 2 }, generator: gEval));
        var solver = new EulerSolver();
        Tensor Sample(IFlowModel model, int steps)
        {
            using var r = solver.Sample(model, noise, null, TimeGrid.Trellis(steps));
            return r.Samples.detach().clone();
        }
        double Sw(Tensor x) => SlicedW1(reference, x);
        double floor = Sw(floorSet);
        double teacher1 = Sw(Sample(teacher, 1));
        double teacher25 = Sw(Sample(teacher, 25));
        double exact25 = Sw(Sample(mog, 25));
        double student1 = Sw(Sample(student, 1));
        double rawStudent1 = Sw(Sample(distiller.Student, 1));
        output.WriteLine($"SW1 to data: two-sample floor {floor:F4}; exact velocity 25-step {exact25:F4}; teacher 1-step {teacher1:F4}, 25-step {teacher25:F4}; " +
                         $"student (EMA) 1-step {student1:F4} (raw weights {rawStudent1:F4}); total {watch.Elapsed.TotalSeconds:F1} s");
        output.WriteLine($"SW2 (SampleDistances, 256 random directions): teacher 1-step {SampleDistances.SlicedWasserstein(reference, Sample(teacher, 1), generator: new Generator(9)):F4}, " +
                         $"25-step {SampleDistances.SlicedWasserstein(reference, Sample(teacher, 25), generator: new Generator(9)):F4}, student 1-step {SampleDistances.SlicedWasserstein(reference, Sample(student, 1), generator: new Generator(9)):F4}");

        Assert.True(student1 * 3 <= teacher1, $"student 1-step SW1 {student1:F4} is not 3x better than the teacher's 1-step {teacher1:F4}");
        Assert.True(student1 <= 1.5 * teacher25, $"student 1-step SW1 {student1:F4} is not within 1.5x of the teacher's 25-step {teacher25:F4}");
    }

    /// <summary>Sliced Wasserstein-1 distance over <paramref name="directions"/> evenly spaced directions (equal sample counts).</summary>
    internal static double SlicedW1(Tensor a, Tensor b, int directions = 64)
    {
        if (a.shape[0] != b.shape[0]) throw new ArgumentException("equal sample counts expected");
        using var scope = torch.NewDisposeScope();
        var angles = torch.arange(directions, dtype: ScalarType.Float64) * (Math.PI / directions);
        var dirs = torch.stack(new[] { torch.cos(angles), torch.sin(angles) }, 1);
        var pa = a.to(ScalarType.Float64).matmul(dirs.T).sort(0).Values;
        var pb = b.to(ScalarType.Float64).matmul(dirs.T).sort(0).Values;
        return (pa - pb).abs().mean().item<double>();
    }
}
