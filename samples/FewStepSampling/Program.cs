// MdtDist main job: distil a multi-step flow into a 1-step student with MDT-dist and compare the two.
//   dotnet run --project samples/FewStepSampling -c Release
// Data: a 2-D mixture of four Gaussians under TRELLIS's path; its exact marginal velocity is known
// (GaussianMixtureFlow). Teacher: a small MLP flow fitted to that velocity. Student: a copy of the teacher distilled
// with MDT-dist (Velocity Matching + Velocity Distillation) by MdtDistiller. Quality: sliced Wasserstein-2 distance
// of 4096 samples to 4096 fresh data samples (lower is better; the data-vs-data floor is printed).
using System.Diagnostics;
using MdtDist.Core.Distillation;
using MdtDist.Core.Evaluation;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

int distillSteps = args.Length > 0 && int.TryParse(args[0], out var n) ? n : 2000;
const int EvalCount = 4096;
torch.manual_seed(0);
var total = Stopwatch.StartNew();
var mog = new GaussianMixtureFlow(new double[,] { { 1, 1 }, { -1, 1 }, { 1, -1 }, { -1, -1 } }, std: 0.2);
Console.WriteLine($"MdtDist main job: MDT-dist on a 2-D Gaussian mixture (float32, CPU, {torch.get_num_threads()} threads)");

// 1. Teacher: regress an MLP flow onto the exact marginal velocity.
var teacher = new MlpFlow(seed: 1);
using (var opt = torch.optim.Adam(teacher.Module.parameters(), 2e-3))
using (var g = new Generator(2))
{
    var bar = new ConsoleBar("fitting the teacher");
    for (int i = 0; i < 1500; i++)
    {
        using var scope = torch.NewDisposeScope();
        var x0 = Latent.Dense(mog.SampleData(512, g));
        var t = torch.rand(new long[] { 512 }, generator: g);
        var xt = x0.With(RectifiedFlowPath.Trellis.Interpolate(x0, torch.randn(new long[] { 512, 2 }, generator: g), t));
        opt.zero_grad();
        var loss = (teacher.Velocity(xt, t, null) - mog.Velocity(xt, t, null)).square().mean();
        loss.backward();
        opt.step();
        bar.Report(i + 1, 1500);
    }
}

// 2. Distil a copy of the teacher into a 1-step student.
var objective = MdtDistObjective.Create(new MdtDistSettings
{
    Mode = DistillationMode.Discrete, DNorm = false, GuidanceVm = 0, GuidanceVd = 0, TimeSampler = UniformTimeSampler.Instance,
});
var data = new DelegateDataSource(step =>
{
    using var g = new Generator((ulong)(10_000 + step));
    return new DistillationBatch(Latent.Dense(mog.SampleData(256, g)));
});
var options = new MdtDistillerOptions { LearningRate = 1e-3, Seed = 3, EmaRates = new[] { 0.99 }, Clipping = new GradientClipping(MaxNorm: 10.0), LogEvery = 0 };
var distillTime = Stopwatch.StartNew();
using var distiller = MdtDistiller.FromTeacher(teacher, () => new MlpFlow(seed: 4), objective, options);
var dbar = new ConsoleBar("distilling (MDT-dist)");
distiller.Train(data, distillSteps, new InlineProgress<DistillationProgress>(p => dbar.Report((int)p.Step, (int)p.TotalSteps, $"loss {p.Loss:F3}")));
distillTime.Stop();
var student = new MlpFlow(seed: 5);
distiller.CopyEmaTo(student.Module);

// 3. Sample and measure.
using var gEval = new Generator(77);
using var reference = mog.SampleData(EvalCount, gEval);
using var floorSet = mog.SampleData(EvalCount, gEval);
var noise = Latent.Dense(torch.randn(new long[] { EvalCount, 2 }, generator: gEval));
double Sw(Tensor x) => SampleDistances.SlicedWasserstein(x, reference, 256, new Generator(9));
Console.WriteLine();
Console.WriteLine($"{"model / schedule",-40} {"evals",6} {"time ms",9} {"SW2 to data",12}");
void Row(string name, IFlowModel model, double[] grid)
{
    using (new EulerSolver().Sample(model, noise, null, grid)) { } // warm-up
    var sw = Stopwatch.StartNew();
    using var r = new EulerSolver().Sample(model, noise, null, grid);
    sw.Stop();
    Console.WriteLine($"{name,-40} {r.Evaluations,6} {sw.Elapsed.TotalMilliseconds,9:F2} {Sw(r.Samples),12:F4}");
}
Row("exact velocity, Euler 25 (TRELLIS s=3)", mog, TimeGrid.Trellis(25, 3.0));
Row("teacher MLP, Euler 25 (TRELLIS s=3)", teacher, TimeGrid.Trellis(25, 3.0));
Row("teacher MLP, Euler 2", teacher, TimeGrid.Trellis(2));
Row("teacher MLP, Euler 1", teacher, TimeGrid.Trellis(1));
Row("MDT-dist student (EMA), Euler 1", student, TimeGrid.Trellis(1));
Console.WriteLine($"{"(data vs data: the two-sample floor)",-40} {"",6} {"",9} {Sw(floorSet),12:F4}");
Console.WriteLine($"distillation: {distillSteps} steps in {distillTime.Elapsed.TotalSeconds:F1} s, {distiller.SkippedSteps} skipped; total {total.Elapsed.TotalSeconds:F1} s");

/// <summary>A small MLP velocity network for 2-D data: input (x, t, sin πt, cos πt), 3 hidden SiLU layers of 64.</summary>
sealed class MlpFlow : IFlowNetwork
{
    private readonly nn.Module<Tensor, Tensor> _net;

    public MlpFlow(ulong seed)
    {
        torch.manual_seed((long)seed);
        _net = nn.Sequential(nn.Linear(5, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2));
    }

    public nn.Module Module => _net;

    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        var tt = t.to(x.Data.dtype).unsqueeze(1);
        return _net.call(torch.cat(new[] { x.Data, tt, torch.sin(Math.PI * tt), torch.cos(Math.PI * tt) }, 1));
    }
}

/// <summary>Reports synchronously (Progress&lt;T&gt; would post to the thread pool).</summary>
sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

/// <summary>A one-line text progress bar (silent when output is redirected).</summary>
sealed class ConsoleBar(string label)
{
    private int _last = -1;

    public void Report(int done, int total, string extra = "")
    {
        int w = 30, filled = done * w / total;
        if (Console.IsOutputRedirected)
        {
            if (done == total) Console.WriteLine($"{label}: done {extra}");
            return;
        }
        if (filled == _last && done != total) return;
        _last = filled;
        Console.Write($"\r{label,-24} [{new string('#', filled)}{new string('.', w - filled)}] {done}/{total} {extra}   ");
        if (done == total) Console.WriteLine();
    }
}
