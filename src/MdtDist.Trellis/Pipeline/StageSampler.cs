using System.Text.Json;
using MdtDist.Core.Flow;
using MdtDist.Core.Sampling;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Pipeline;

/// <summary>The ODE solver a stage uses.</summary>
public enum StageSolver
{
    /// <summary>Euler, exactly as TRELLIS's <c>FlowEulerSampler</c> family steps.</summary>
    Euler,
    /// <summary>Heun's second-order method (two evaluations per step).</summary>
    Heun,
}

/// <summary>
/// How one TRELLIS stage samples: solver, steps, time warp and classifier-free guidance. The defaults are
/// TRELLIS-image-large's <c>pipeline.json</c> (Euler, 25 steps, CFG 5.0 on t ∈ [0.5, 1.0], rescale_t 3.0, σ 1e-5):
/// 44 network evaluations. A distilled student uses a few steps, e.g. <see cref="Student"/>.
/// </summary>
public sealed record StageSampler
{
    /// <summary>Number of solver steps (ignored when <see cref="ExplicitGrid"/> is set).</summary>
    public int Steps { get; init; } = 25;

    /// <summary>TRELLIS's <c>cfg_strength</c> w: v = (1+w)·v_c − w·v_u. 0 disables guidance.</summary>
    public double CfgStrength { get; init; } = 5.0;

    /// <summary>Lower end of the t-interval where guidance applies.</summary>
    public double CfgIntervalStart { get; init; } = 0.5;

    /// <summary>Upper end of the t-interval where guidance applies.</summary>
    public double CfgIntervalEnd { get; init; } = 1.0;

    /// <summary>TRELLIS's <c>rescale_t</c> warp s of the uniform grid.</summary>
    public double RescaleT { get; init; } = 3.0;

    /// <summary>The solver.</summary>
    public StageSolver Solver { get; init; } = StageSolver.Euler;

    /// <summary>An explicit time grid (decreasing, from 1 to 0); overrides <see cref="Steps"/> and <see cref="RescaleT"/>.</summary>
    public IReadOnlyList<double>? ExplicitGrid { get; init; }

    /// <summary>σ_min of the flow path.</summary>
    public double SigmaMin { get; init; } = RectifiedFlowPath.TrellisSigmaMin;

    /// <summary>TRELLIS-image-large's settings (both stages).</summary>
    public static StageSampler TrellisImageLarge { get; } = new();

    /// <summary>A few-step student schedule: <paramref name="steps"/> uniform Euler steps (rescale 1), guidance on every step.</summary>
    public static StageSampler Student(int steps, double cfgStrength = 0.0) =>
        new() { Steps = steps, CfgStrength = cfgStrength, CfgIntervalStart = 0.0, CfgIntervalEnd = 1.0, RescaleT = 1.0 };

    /// <summary>The time grid this stage walks.</summary>
    public double[] Grid() => ExplicitGrid is { } g ? TimeGrid.Explicit(g.ToArray()) : TimeGrid.Trellis(Steps, RescaleT);

    /// <summary>The solver object.</summary>
    public FlowSolver CreateSolver()
    {
        var path = new RectifiedFlowPath(SigmaMin);
        return Solver switch
        {
            StageSolver.Euler => new EulerSolver { Path = path },
            StageSolver.Heun => new HeunSolver { Path = path },
            _ => throw new ArgumentException($"unknown solver {Solver}.", nameof(Solver)),
        };
    }

    /// <summary>Wraps <paramref name="model"/> with this stage's guidance (or returns it when the strength is 0).</summary>
    /// <param name="model">The conditional model.</param>
    /// <param name="negativeCondition">The unconditional tokens; null means <c>zeros_like(condition)</c>.</param>
    public IFlowModel Guide(IFlowModel model, Tensor? negativeCondition = null) =>
        CfgStrength == 0 ? model : new ClassifierFreeGuidance(model, CfgStrength, negativeCondition, CfgIntervalStart, CfgIntervalEnd);

    /// <summary>Network evaluations one sample costs with this schedule (guided evaluations count 2).</summary>
    public int Evaluations()
    {
        var grid = Grid();
        int Cost(double t) => CfgStrength != 0 && t >= CfgIntervalStart && t <= CfgIntervalEnd ? 2 : 1;
        int n = 0;
        for (int i = 0; i + 1 < grid.Length; i++)
            n += Solver == StageSolver.Heun ? Cost(grid[i]) + Cost(grid[i + 1]) : Cost(grid[i]);
        return n;
    }

    /// <summary>
    /// Reads a sampler entry of TRELLIS's <c>pipeline.json</c>: <c>{"name": "FlowEuler…Sampler", "args": {"sigma_min": …},
    /// "params": {"steps", "cfg_strength", "cfg_interval", "rescale_t"}}</c>.
    /// </summary>
    /// <exception cref="InvalidDataException">An unknown sampler class or malformed params.</exception>
    public static StageSampler FromPipelineJson(JsonElement sampler, string source = "pipeline.json")
    {
        string name = sampler.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "";
        var s = new StageSampler();
        bool interval = name == "FlowEulerGuidanceIntervalSampler";
        if (name is not ("FlowEulerSampler" or "FlowEulerCfgSampler" or "FlowEulerGuidanceIntervalSampler"))
            throw new InvalidDataException($"{source}: unknown sampler class '{name}' (expected FlowEulerSampler, FlowEulerCfgSampler or FlowEulerGuidanceIntervalSampler).");
        try
        {
            if (sampler.TryGetProperty("args", out var a) && a.TryGetProperty("sigma_min", out var sm)) s = s with { SigmaMin = sm.GetDouble() };
            if (sampler.TryGetProperty("params", out var p))
            {
                if (p.TryGetProperty("steps", out var st)) s = s with { Steps = st.GetInt32() };
                s = s with { CfgStrength = p.TryGetProperty("cfg_strength", out var cs) ? cs.GetDouble() : 0 };
                if (p.TryGetProperty("rescale_t", out var rt)) s = s with { RescaleT = rt.GetDouble() };
                else s = s with { RescaleT = 1.0 };
                if (interval && p.TryGetProperty("cfg_interval", out var ci))
                {
                    var v = ci.EnumerateArray().Select(e => e.GetDouble()).ToArray();
                    if (v.Length != 2) throw new InvalidDataException($"{source}: cfg_interval must have two numbers.");
                    s = s with { CfgIntervalStart = v[0], CfgIntervalEnd = v[1] };
                }
                else s = s with { CfgIntervalStart = 0, CfgIntervalEnd = 1 };
            }
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{source}: malformed sampler params ({e.Message}).", e);
        }
        if (name == "FlowEulerSampler") s = s with { CfgStrength = 0 };
        return s;
    }
}
