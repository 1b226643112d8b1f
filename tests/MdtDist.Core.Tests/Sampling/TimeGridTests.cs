using MdtDist.Core.IO;
using MdtDist.Core.Sampling;
using Xunit;

namespace MdtDist.Core.Tests.Sampling;

public class TimeGridTests
{
    /// <summary>
    /// TestData/trellis_t_seq.safetensors holds TRELLIS's grids computed with numpy exactly as
    /// trellis/pipelines/samplers/flow_euler.py does (t = linspace(1, 0, steps+1); s·t/(1+(s−1)t)), see make_t_seq.py.
    /// </summary>
    [Theory]
    [InlineData(1, 1.0)]
    [InlineData(2, 1.0)]
    [InlineData(25, 1.0)]
    [InlineData(1, 3.0)]
    [InlineData(2, 3.0)]
    [InlineData(25, 3.0)]
    [InlineData(4, 3.0)]
    [InlineData(12, 3.0)]
    public void MatchesTrellisBitForBit(int steps, double rescale)
    {
        var file = Path.Combine(AppContext.BaseDirectory, "TestData", "trellis_t_seq.safetensors");
        var all = SafeTensors.Load(file);
        var expected = all[$"steps{steps}_rescale{rescale:0}"].data<double>().ToArray();
        var grid = TimeGrid.Trellis(steps, rescale);
        Assert.Equal(expected.Length, grid.Length);
        for (int i = 0; i < grid.Length; i++) Assert.Equal(BitConverter.DoubleToInt64Bits(expected[i]), BitConverter.DoubleToInt64Bits(grid[i]));
        foreach (var t in all.Values) t.Dispose();
    }

    [Fact]
    public void TwentyFiveStepsWithRescaleThreeSpendNineteenStepsAboveOneHalf()
    {
        var grid = TimeGrid.Trellis(25, 3.0);
        Assert.Equal(19, grid.Take(25).Count(t => t >= 0.5));
        Assert.Equal(1.0, grid[0]);
        Assert.Equal(0.0, grid[^1]);
    }
}
