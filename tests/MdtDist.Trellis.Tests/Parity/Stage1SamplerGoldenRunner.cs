using System.Text.Json;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using MdtDist.Trellis.Flow;
using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// TRELLIS's FlowEulerCfgSampler / FlowEulerGuidanceIntervalSampler on the stage-1 flow, through Core's
/// <see cref="TimeGrid.Trellis"/>, <see cref="ClassifierFreeGuidance"/> and <see cref="EulerSolver"/> and the
/// <see cref="SparseStructureFlowAdapter"/> adapter (t×1000).
/// </summary>
public sealed class Stage1SamplerGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Kind == "sampler" && c.ConfigName == SparseStructureFlowConfig.ClassName;

    public void Run(GoldenCase c)
    {
        using var scope = torch.NewDisposeScope();
        using var network = GoldenModels.Load<SparseStructureFlowModel>(c);
        network.AttentionBackend = AttentionBackend.Math;
        var model = new SparseStructureFlowAdapter(network);
        var noise = c["in.noise"];
        var cond = c["in.cond"];
        // TRELLIS's image pipeline uses neg_cond = zeros_like(cond) (the guidance default when in.neg_cond is absent).
        var negCond = c.Optional("in.neg_cond");
        string sampler = c.Settings.GetProperty("sampler").GetString()!;
        bool interval = sampler switch
        {
            "FlowEulerCfgSampler" => false,
            "FlowEulerGuidanceIntervalSampler" => true,
            _ => throw new Xunit.Sdk.XunitException($"{c.Name}: unknown sampler {sampler}"),
        };
        var solver = new EulerSolver { Path = new RectifiedFlowPath(c.Settings.GetProperty("sigma_min").GetDouble()) };
        foreach (var run in c.Settings.GetProperty("runs").EnumerateArray())
        {
            using var runScope = torch.NewDisposeScope();
            string name = run.GetProperty("name").GetString()!;
            int steps = run.GetProperty("steps").GetInt32();
            double rescale = run.GetProperty("rescale_t").GetDouble();
            double w = run.GetProperty("cfg_strength").GetDouble();
            bool record = run.TryGetProperty("record_steps", out var rs) && rs.GetBoolean();
            double lo = 0, hi = 1;
            if (interval)
            {
                var iv = run.GetProperty("cfg_interval").EnumerateArray().Select(e => e.GetDouble()).ToArray();
                (lo, hi) = (iv[0], iv[1]);
            }
            var grid = TimeGrid.Trellis(steps, rescale);
            GoldenReport.Output(c, $"out.{name}.t_seq", torch.tensor(grid, dtype: ScalarType.Float64));
            var guided = new ClassifierFreeGuidance(model, w, negativeCondition: negCond, intervalStart: lo, intervalEnd: hi);
            using var result = solver.Sample(guided, Latent.Dense(noise), cond, grid, new SamplerOptions { RecordTrajectory = record });
            GoldenReport.Output(c, $"out.{name}.samples", result.Samples);
            if (record)
            {
                GoldenReport.Output(c, $"out.{name}.pred_x_t", torch.stack(result.PredXt));
                GoldenReport.Output(c, $"out.{name}.pred_x_0", torch.stack(result.PredX0));
            }
            result.Samples.Dispose();
        }
    }
}
