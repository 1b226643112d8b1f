using System.Text.Json.Nodes;
using MdtDist.Core.Training;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

/// <summary><see cref="ActivationCheckpoint"/>: the same gradients as a plain call, with the forward run again in backward.</summary>
public class ElasticActivationCheckpointTests
{
    /// <summary>A two-layer block with a second input: <c>W2·silu(W1·x + b1) · (1 + m) + x</c>.</summary>
    private static (Linear L1, Linear L2) Block(long seed)
    {
        var l1 = nn.Linear(6, 24, dtype: ScalarType.Float64);
        var l2 = nn.Linear(24, 6, dtype: ScalarType.Float64);
        var g = new Generator((ulong)seed);
        using (torch.no_grad())
            foreach (var p in l1.parameters().Concat(l2.parameters()))
                p.copy_(torch.randn(p.shape, ScalarType.Float64, generator: g) * 0.3);
        return (l1, l2);
    }

    private static Tensor Apply(Linear l1, Linear l2, Tensor x, Tensor m) => l2.forward(nn.functional.silu(l1.forward(x))) * (m + 1) + x;

    [Fact]
    public void GradientsEqualThePlainCallBitForBitAndTheForwardRunsAgain()
    {
        var (l1, l2) = Block(3);
        var g = new Generator(4);
        var x0 = torch.randn(new long[] { 10, 6 }, ScalarType.Float64, generator: g);
        var m0 = torch.randn(new long[] { 10, 1 }, ScalarType.Float64, generator: g);
        var w = torch.randn(new long[] { 10, 6 }, ScalarType.Float64, generator: g);
        var parameters = l1.parameters().Concat(l2.parameters()).ToArray();

        // Reference: the plain graph (x goes through a leaf-producing op so that its gradient flows twice: into the
        // block and around it).
        var x = x0.clone().requires_grad_(true);
        var m = m0.clone().requires_grad_(true);
        var y = Apply(l1, l2, x * 2, m) + x;
        (y * w).sum().backward();
        var expected = parameters.Select(p => p.grad!.clone()).Append(x.grad!.clone()).Append(m.grad!.clone()).ToArray();
        foreach (var p in parameters) p.grad = null;

        int calls = 0;
        var xc = x0.clone().requires_grad_(true);
        var mc = m0.clone().requires_grad_(true);
        var yc = ActivationCheckpoint.Run(a => { calls++; return Apply(l1, l2, a[0]!, a[1]!); }, new[] { xc * 2, mc }, parameters) + xc;
        Assert.Equal(1, calls);
        Assert.True(yc.requires_grad);
        (yc * w).sum().backward();
        Assert.Equal(2, calls);   // recomputed once in backward
        var actual = parameters.Select(p => p.grad!).Append(xc.grad!).Append(mc.grad!).ToArray();
        for (int i = 0; i < expected.Length; i++)
            Assert.True(expected[i].shape.SequenceEqual(actual[i].shape) && expected[i].equal(actual[i]).all().item<bool>(), $"gradient {i} differs by {(expected[i] - actual[i]).abs().max().item<double>()}");
    }

    [Fact]
    public void WithoutGradientsItIsAPlainCall()
    {
        var (l1, l2) = Block(5);
        var x = torch.randn(new long[] { 4, 6 }, ScalarType.Float64, generator: new Generator(6));
        var m = torch.zeros(4, 1, ScalarType.Float64);
        int calls = 0;
        Tensor y;
        using (torch.no_grad())
            y = ActivationCheckpoint.Run(a => { calls++; return Apply(l1, l2, a[0]!, a[1]!); }, new[] { x, m }, l1.parameters().Concat(l2.parameters()));
        Assert.Equal(1, calls);
        Assert.False(y.requires_grad);
        Assert.True(Apply(l1, l2, x, m).equal(y).all().item<bool>());
    }

    [Fact]
    public void FrozenParametersAndConstantInputsGetNoGradient()
    {
        var (l1, l2) = Block(7);
        foreach (var p in l1.parameters()) p.requires_grad = false;
        var x = torch.randn(new long[] { 4, 6 }, ScalarType.Float64, generator: new Generator(8));
        var m = torch.randn(new long[] { 4, 1 }, ScalarType.Float64, generator: new Generator(9)).requires_grad_(true);
        var y = ActivationCheckpoint.Run(a => Apply(l1, l2, a[0]!, a[1]!), new[] { x, m }, l1.parameters().Concat(l2.parameters()));
        y.sum().backward();
        Assert.Null(l1.weight!.grad);
        Assert.NotNull(l2.weight!.grad);
        Assert.NotNull(m.grad);
        Assert.Null(x.grad);
    }
}

/// <summary>TRELLIS's <c>LinearMemoryController</c>: the ratio rule, the record/fit cycle and the config keys.</summary>
public class ElasticLinearMemoryControllerTests
{
    /// <summary>A meter that reports a peak computed from what the last record did.</summary>
    private sealed class FakeMeter : IPeakMemoryMeter
    {
        public Func<long> Peak { get; set; } = () => 0;
        public int Resets { get; private set; }
        public void ResetPeak() => Resets++;
        public long PeakBytes => Peak();
        public long TotalBytes => 8L << 30;
    }

    [Fact]
    public void RatioFollowsTheLinearModelAndTheCap()
    {
        var c = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 10, TargetRatio = 0.75, MaxMemRatioStart = 0.5, Params = (1e-3, 2.0) }, new FakeMeter());
        // (10·0.75 − 2) / (1e-3 · n): n = 22000 → 0.25; n = 5500 → 1.0, capped at 0.5; n huge → ~0; b above the budget → 0.
        Assert.Equal((7.5 - 2.0) / (1e-3 * 22000), c.GetMemRatio(22000), 15);
        Assert.Equal(0.5, c.GetMemRatio(5500));
        var over = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 1, Params = (1e-3, 5.0) }, new FakeMeter());
        Assert.Equal(0.0, over.GetMemRatio(1000));
        // Without a fit (k = 0) the ratio is drawn below the cap, from the controller's own seeded generator.
        var a = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 1, MaxMemRatioStart = 0.3 }, new FakeMeter(), seed: 4);
        var b = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 1, MaxMemRatioStart = 0.3 }, new FakeMeter(), seed: 4);
        for (int i = 0; i < 20; i++)
        {
            double r = a.GetMemRatio(100);
            Assert.InRange(r, 0, 0.3);
            Assert.Equal(r, b.GetMemRatio(100));
        }
    }

    [Fact]
    public void RecordsFitTheLineEveryUpdateAndRaiseTheCap()
    {
        // Memory of a record: exactly 0.002 GiB per (row × ratio) + 1.5 GiB; the fit must recover it.
        var meter = new FakeMeter();
        var c = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 4, UpdateEvery = 4, BufferSize = 8, MaxMemRatioStart = 0.2 }, meter);
        var rows = new long[] { 1000, 3000, 2000, 500 };
        var ratios = new double[] { 0.2, 0.5, 1.0, 0.7 };
        for (int i = 0; i < 4; i++)
        {
            int j = i;
            meter.Peak = () => (long)Math.Round((0.002 * rows[j] * ratios[j] + 1.5) * (1L << 30));
            using (c.Record())
            {
                c.UpdateRunStates(rows[j], ratios[j]);
                c.UpdateRunStates(rows[j], ratios[j]);   // two elastic forwards of the same input (VM and VD)
            }
            Assert.Equal(i + 1, c.Step);
            Assert.Equal(rows[j], c.LastLog!.InputSize);
        }
        Assert.Equal(4, meter.Resets);
        Assert.Equal(0.3, c.MaxMemRatio, 12);
        Assert.Equal(0.002, c.Params.K, 9);   // bytes are rounded to 1 B of 2^30: ~1e-9 relative
        Assert.Equal(1.5, c.Params.B, 6);
        Assert.Equal(new JsonArray(c.Params.K, c.Params.B).ToJsonString(), c.StateDict()["params"]!.ToJsonString());

        // Another input size within one record is TRELLIS's error; a record without elastic forwards adds no sample.
        using (c.Record())
        {
            c.UpdateRunStates(10, 1);
            Assert.Throws<InvalidOperationException>(() => c.UpdateRunStates(11, 1));
        }
        long steps = c.Step;
        using (c.Record()) { }
        Assert.Equal(steps, c.Step);

        var restored = new LinearMemoryController(new LinearMemoryControllerOptions { AvailableMemoryGiB = 4 }, new FakeMeter());
        restored.LoadStateDict(c.StateDict());
        Assert.Equal(c.Params, restored.Params);
    }

    [Fact]
    public void ConfigKeysAreTrellisOnesAndTheRestIsNamed()
    {
        // MDT-dist's and TRELLIS's training configs: {"name": "LinearMemoryController", "args": {"target_ratio": 0.75, "max_mem_ratio_start": 0.5}}.
        var o = LinearMemoryControllerOptions.FromConfig(JsonNode.Parse("""{"name": "LinearMemoryController", "args": {"target_ratio": 0.75, "max_mem_ratio_start": 0.5}}"""));
        Assert.Equal(0.75, o.TargetRatio);
        Assert.Equal(0.5, o.MaxMemRatioStart);
        Assert.Equal(1000, o.BufferSize);
        Assert.Equal(500, o.UpdateEvery);
        Assert.Null(o.AvailableMemoryGiB);
        var all = LinearMemoryControllerOptions.FromConfig(JsonNode.Parse("""{"name": "LinearMemoryController", "args": {"buffer_size": 10, "update_every": 5, "available_memory": 12.5, "params": [0.001, 2]}}"""));
        Assert.Equal((10, 5, 12.5, (0.001, 2.0)), (all.BufferSize, all.UpdateEvery, all.AvailableMemoryGiB, all.Params!.Value));

        var e = Assert.Throws<InvalidDataException>(() => LinearMemoryControllerOptions.FromConfig(JsonNode.Parse(
            """{"name": "OtherController", "args": {"target_ratio": 2, "device": 0, "warmup": 1, "update_every": 1.5}}""")));
        foreach (var key in new[] { "elastic.name", "elastic.args.target_ratio", "elastic.args.device", "elastic.args.warmup", "elastic.args.update_every" })
            Assert.Contains(key, e.Message);
    }
}
