using System.Diagnostics;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Sampling;

public class MemoryTests
{
    /// <summary>A small two-layer MLP velocity model (with a time input): allocates several temporaries per call.</summary>
    private sealed class SmallMlp : IFlowModel
    {
        private readonly nn.Module<Tensor, Tensor> _net;
        public SmallMlp()
        {
            // The verdict (memory stays flat) does not depend on the weights: default initialisation.
            _net = nn.Sequential(nn.Linear(65, 128), nn.SiLU(), nn.Linear(128, 64));
        }
        public Tensor Velocity(Latent x, Tensor t, Tensor? condition) =>
            _net.call(torch.cat(new[] { x.Data, t.unsqueeze(1).to(x.Data.dtype) }, 1));
    }

    [Fact]
    public void ThousandEulerStepsLeaveMemoryFlat()
    {
        var model = new SmallMlp();
        using var noise = torch.randn(new long[] { 32, 64 }, generator: new Generator(3));
        var solver = new EulerSolver();
        var grid = TimeGrid.Trellis(1000);
        // Warm up (allocator pools, JIT).
        using (solver.Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(50))) { }
        GC.Collect(); GC.WaitForPendingFinalizers();
        long liveBefore = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        long rssBefore = Process.GetCurrentProcess().WorkingSet64;
        using (var r = solver.Sample(model, Latent.Dense(noise), null, grid))
        {
            Assert.Equal(1000, r.Evaluations);
            Assert.Equal(new long[] { 32, 64 }, r.Samples.shape);
        }
        GC.Collect(); GC.WaitForPendingFinalizers();
        long liveAfter = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        long rssAfter = Process.GetCurrentProcess().WorkingSet64;
        // Each step makes ~10 temporaries; a leak would leave thousands alive.
        Assert.InRange(liveAfter - liveBefore, -5, 5);
        Assert.True(rssAfter - rssBefore < 64L << 20, $"RSS grew by {(rssAfter - rssBefore) >> 20} MiB over 1000 steps");
    }
}
