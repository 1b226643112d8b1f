using TorchSharp;
using Xunit;

namespace MdtDist.Core.Tests.Native;

public class TorchInitTests
{
    [Fact]
    public void TorchInitialisesInTheTestProcess()
    {
        using var a = torch.ones(3, dtype: torch.float64);
        using var b = (a * 2).sum();
        Assert.Equal(6.0, b.item<double>());
    }
}
