// MdtDist main job: sample a flow with TRELLIS's 25-step schedule and with 1–2 steps, and print quality and time.
// The flow is the exact (analytic) velocity of an 8-Gaussian ring, so the 25-step result is the reference quality a
// few-step sampler has to reach; `dotnet run --project samples/FewStepSampling -c Release`.
using System.Diagnostics;
using MdtDist.Core.Evaluation;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using static TorchSharp.torch;

int samples = args.Length > 0 && int.TryParse(args[0], out var n) ? n : 4096;
var teacher = GaussianMixtureFlow.Ring();
var gen = new Generator(1234);
using var data = teacher.SampleData(samples, gen);
using var noise = torch.randn(new long[] { samples, 2 }, generator: gen);

Console.WriteLine($"MdtDist few-step sampling: {samples} samples of an 8-Gaussian ring (exact teacher velocity), float32, CPU");
Console.WriteLine($"{"sampler",-34} {"evals",6} {"time ms",9} {"sliced W2 to data",18}");

void Run(string name, FlowSolver solver, double[] grid, bool progressBar = false)
{
    IProgress<SamplerProgress>? progress = progressBar ? new ConsoleBar() : null;
    var sw = Stopwatch.StartNew();
    using var r = solver.Sample(teacher, Latent.Dense(noise), null, grid, new SamplerOptions { Progress = progress });
    sw.Stop();
    double d = SampleDistances.SlicedWasserstein(r.Samples, data, 256, new Generator(99));
    Console.WriteLine($"{name,-34} {r.Evaluations,6} {sw.Elapsed.TotalMilliseconds,9:F1} {d,18:F4}");
}

// Warm up (JIT, thread pools) so the timings below are steady-state.
using (new EulerSolver().Sample(teacher, Latent.Dense(noise), null, TimeGrid.Trellis(3))) { }
Run("Euler 25 steps (TRELLIS, s=3)", new EulerSolver(), TimeGrid.Trellis(25, 3.0), progressBar: true);
Run("Euler 2 steps", new EulerSolver(), TimeGrid.Trellis(2, 1.0));
Run("Euler 1 step", new EulerSolver(), TimeGrid.Trellis(1));
Run("Heun 1 step (2 evals)", new HeunSolver(), TimeGrid.Trellis(1));
using (var again = teacher.SampleData(samples, new Generator(4321)))
    Console.WriteLine($"{"(a second data draw: noise floor)",-34} {"",6} {"",9} {SampleDistances.SlicedWasserstein(again, data, 256, new Generator(99)),18:F4}");

/// <summary>A one-line text progress bar.</summary>
sealed class ConsoleBar : IProgress<SamplerProgress>
{
    public void Report(SamplerProgress p)
    {
        if (Console.IsOutputRedirected) return;
        int w = 30, done = p.Step * w / p.TotalSteps;
        Console.Write($"\r[{new string('#', done)}{new string('.', w - done)}] step {p.Step}/{p.TotalSteps} t={p.TPrev:F3}");
        if (p.Step == p.TotalSteps) Console.Write("\r" + new string(' ', 60) + "\r");
    }
}
