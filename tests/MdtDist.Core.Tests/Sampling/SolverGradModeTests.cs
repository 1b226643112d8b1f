using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Sampling;

/// <summary>Sampling is inference: the solvers evaluate the model with gradients disabled unless asked otherwise.</summary>
public class SolverGradModeTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SolversEvaluateTheModelWithoutGradientsByDefault(bool heun)
    {
        var w = torch.tensor(new[] { 0.5, -0.25 }, dtype: ScalarType.Float64).requires_grad_();
        var gradEnabled = new List<bool>();
        var model = new DelegateFlowModel((x, t, c) =>
        {
            gradEnabled.Add(torch.is_grad_enabled());
            return x.Data * w;
        });
        using var noise = torch.randn(new long[] { 3, 2 }, dtype: ScalarType.Float64, generator: new Generator(5));
        FlowSolver solver = heun ? new HeunSolver() : new EulerSolver();
        Assert.True(torch.is_grad_enabled());
        using var r = solver.Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(4));
        Assert.Equal(heun ? 8 : 4, gradEnabled.Count);
        Assert.All(gradEnabled, g => Assert.False(g));
        Assert.False(r.Samples.requires_grad);
        Assert.True(torch.is_grad_enabled());   // restored afterwards

        // NoGrad = false keeps the graph: the sample is differentiable in the weights.
        gradEnabled.Clear();
        using var g2 = solver.Sample(model, Latent.Dense(noise), null, TimeGrid.Trellis(4), new SamplerOptions { NoGrad = false });
        Assert.All(gradEnabled, g => Assert.True(g));
        Assert.True(g2.Samples.requires_grad);
    }
}
