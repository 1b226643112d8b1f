using BenchmarkDotNet.Attributes;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Benchmarks;

/// <summary>
/// Solver overhead and step-count scaling on a small MLP velocity network (float32, CPU): 25 TRELLIS steps with
/// guidance-interval CFG (44 evaluations) against the 1- and 2-step student schedules.
/// </summary>
[MemoryDiagnoser]
public class SamplerBenchmarks
{
    private IFlowModel _model = null!;
    private Tensor _noise = null!;
    private Tensor _cond = null!;

    /// <summary>Batch size.</summary>
    [Params(64)]
    public int Batch { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(0);
        var net = nn.Sequential(nn.Linear(256 + 1 + 16, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(), nn.Linear(512, 256));
        net.eval();
        _model = new DelegateFlowModel((x, t, c) => net.call(torch.cat(new[] { x.Data, t.unsqueeze(1).to(x.Data.dtype), c!.expand(x.Data.shape[0], -1) }, 1)));
        _noise = torch.randn(Batch, 256);
        _cond = torch.randn(1, 16);
    }

    [Benchmark(Baseline = true, Description = "teacher: Euler 25 steps, CFG 5 on [0.5,1], rescale 3 (44 evals)")]
    public void Teacher25()
    {
        using var r = new EulerSolver().Sample(new ClassifierFreeGuidance(_model, 5.0, null, 0.5, 1.0), Latent.Dense(_noise), _cond, TimeGrid.Trellis(25, 3.0));
    }

    [Benchmark(Description = "student: Euler 2 steps, no CFG")]
    public void Student2()
    {
        using var r = new EulerSolver().Sample(_model, Latent.Dense(_noise), _cond, TimeGrid.Trellis(2));
    }

    [Benchmark(Description = "student: Euler 1 step, no CFG")]
    public void Student1()
    {
        using var r = new EulerSolver().Sample(_model, Latent.Dense(_noise), _cond, TimeGrid.Trellis(1));
    }
}
