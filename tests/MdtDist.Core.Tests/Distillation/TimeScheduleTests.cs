using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Distillation;

public class TimeScheduleTests
{
    private static string GoldenPath(string name) => Path.Combine(AppContext.BaseDirectory, "golden", name);

    private static double MaxAbs(Tensor a, Tensor b)
    {
        using var d = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    [Fact]
    public void MatchesGoldenScheduleOfTheReference()
    {
        // mdt_losses_schedule: FlowMDTTrainer.sample_t (logitNormal(1,1) / uniform, three modes) and get_target_t (multiphase 1 / 4).
        var tensors = SafeTensors.Load(GoldenPath("mdt_losses_schedule.safetensors"));
        try
        {
            var modes = new Dictionary<string, DistillationMode>
            {
                ["discrete"] = DistillationMode.Discrete, ["continuous"] = DistillationMode.Continuous, ["cm"] = DistillationMode.ConsistencyModel,
            };
            int compared = 0;
            foreach (var (name, mode) in modes)
            {
                var ln = new DistillationTimeSchedule(mode, 0.01, 1e-5, 1, new LogitNormalTimeSampler(1.0, 1.0));
                using var tLn = ln.FromRaw(tensors["in.raw_normal"]);
                Assert.True(MaxAbs(tensors[$"out.sample_t.{name}.logitNormal"], tLn) <= 1e-15, $"sample_t {name} logitNormal");
                var un = new DistillationTimeSchedule(mode, 0.01, 1e-5, 1, UniformTimeSampler.Instance);
                using var tUn = un.FromRaw(tensors["in.raw_uniform"]);
                Assert.True(MaxAbs(tensors[$"out.sample_t.{name}.uniform"], tUn) <= 1e-15, $"sample_t {name} uniform");
                foreach (var m in new[] { 1, 4 })
                {
                    var s = new DistillationTimeSchedule(mode, 0.01, 1e-5, m);
                    using var tt = s.TargetTime(tensors["in.t_query"]);
                    Assert.Equal(0.0, MaxAbs(tensors[$"out.get_target_t.{name}.multiphase{m}"], tt));
                    compared++;
                }
                compared += 2;
            }
            Assert.Equal(12, compared);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    [Fact]
    public void TargetTimeIsTheLargestBoundaryBelowAndWrapsLikeTheReference()
    {
        var s = new DistillationTimeSchedule(DistillationMode.ConsistencyModel, interval: 0.01, multiphase: 4);
        using var t = torch.tensor(new[] { 0.26, 0.2599, 0.51, 0.9, 1.0, 0.005, 0.011 }, dtype: ScalarType.Float64);
        using var target = s.TargetTime(t);
        // t - 0.01 = 0.25 → 0.25; 0.2499 → 0; 0.5 → 0.5; 0.89 → 0.75; 0.99 → 0.75 (no boundary above → index -1 → last);
        // -0.005 → argmax of all-true row is 0 → index -1 → LAST boundary 0.75 (the reference's quirk); 0.001 → 0.
        var expected = new[] { 0.25, 0.0, 0.5, 0.75, 0.75, 0.75, 0.0 };
        Assert.Equal(expected, target.data<double>().ToArray());

        var cont = new DistillationTimeSchedule(DistillationMode.Continuous, multiphase: 4);
        using var tc = cont.TargetTime(torch.tensor(new[] { 0.25, 0.2499 }, dtype: ScalarType.Float64));
        Assert.Equal(new[] { 0.25, 0.0 }, tc.data<double>().ToArray());
    }

    [Fact]
    public void TrainingTimesCoverTheDocumentedRanges()
    {
        using var u = torch.tensor(new[] { 0.0, 1.0 }, dtype: ScalarType.Float64);
        using var d = new DistillationTimeSchedule(DistillationMode.Discrete, 0.01, 1e-5).MapToTraining(u);
        Assert.Equal(0.01 + 1e-5, d[0].item<double>(), 15);
        Assert.Equal(1.0, d[1].item<double>(), 15);
        using var c = new DistillationTimeSchedule(DistillationMode.Continuous, 0.01, 1e-5).MapToTraining(u);
        Assert.Equal(1e-5, c[0].item<double>(), 15);
        Assert.Equal(1.0, c[1].item<double>(), 15);
        Assert.Equal(0.01 + 1e-5, new DistillationTimeSchedule(DistillationMode.ConsistencyModel).MinimumTime, 15);
    }

    [Fact]
    public void SamplersAreSeededAndInRange()
    {
        using var g1 = new Generator(7);
        using var g2 = new Generator(7);
        using var a = LogitNormalTimeSampler.MdtDist.Sample(1000, ScalarType.Float64, generator: g1);
        using var raw = torch.randn(new long[] { 1000 }, dtype: ScalarType.Float64, generator: g2);
        using var b = torch.sigmoid(raw * 1.0 + 1.0);
        Assert.Equal(0.0, MaxAbs(a, b));
        Assert.True(a.min().item<double>() > 0 && a.max().item<double>() < 1);
        // logit-normal(1, 1) has median sigmoid(1) ≈ 0.731
        Assert.InRange(a.median().item<double>(), 0.69, 0.77);
        using var uni = UniformTimeSampler.Instance.Sample(1000, ScalarType.Float64, generator: g1);
        Assert.InRange(uni.mean().item<double>(), 0.45, 0.55);
        Assert.Throws<ArgumentException>(() => new LogitNormalTimeSampler(0, 0));
    }

    [Fact]
    public void TimeBinsFollowNumpyDigitize()
    {
        var t = new[] { 0.0, 0.05, 0.1, 0.3, 0.30000000000000004, 0.99, 1.0 };
        // linspace(0, 1, 11)[3] = 3 * 0.1 = 0.30000000000000004, so 0.3 is still in bin 2.
        Assert.Equal(new[] { 0, 0, 1, 2, 3, 9, 10 }, TimeBins.Assign(t));
        var bins = TimeBins.MeanPerBin(t, new[] { 1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0 });
        Assert.Equal(2.0, bins[0]);
        Assert.Equal(5.0, bins[1]);
        Assert.False(bins.ContainsKey(10));
        Assert.Equal(5, bins.Count);
    }
}
