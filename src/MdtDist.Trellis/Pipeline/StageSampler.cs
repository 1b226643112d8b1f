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

    /// <summary>
    /// Guided steps run the conditional and unconditional passes as one 2B-batch forward
    /// (<see cref="ClassifierFreeGuidance.BatchedPasses"/>; default true: measured faster on the CPU, docs/trellis-cpu.md).
    /// False: two calls, bit-identical to the reference's order of evaluation.
    /// </summary>
    public bool BatchedGuidance { get; init; } = true;

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

    /// <summary>
    /// Wraps <paramref name="model"/> with this stage's guidance (or returns it when the strength is 0). The two passes
    /// run as one 2B-batch forward when <see cref="BatchedGuidance"/> is true (the default), equal to the two-call
    /// result to ~1e-15 relative in float64, at twice the activation memory of one pass.
    /// </summary>
    /// <param name="model">The conditional model.</param>
    /// <param name="negativeCondition">The unconditional tokens; null means <c>zeros_like(condition)</c>.</param>
    public IFlowModel Guide(IFlowModel model, Tensor? negativeCondition = null) =>
        CfgStrength == 0 ? model : new ClassifierFreeGuidance(model, CfgStrength, negativeCondition, CfgIntervalStart, CfgIntervalEnd) { BatchedPasses = BatchedGuidance };

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

    /// <summary>The most steps a stage may take (a bound on what a file can make the library allocate: the time grid and
    /// the step loop are O(steps)).</summary>
    public const int MaxSteps = 10_000;

    /// <summary>Every problem of these settings, keyed by the <c>pipeline.json</c> name of the value.</summary>
    internal IEnumerable<string> Problems()
    {
        if (ExplicitGrid is null && (Steps < 1 || Steps > MaxSteps)) yield return $"steps: must be in [1, {MaxSteps}], found {Steps}";
        if (!double.IsFinite(CfgStrength) || CfgStrength < 0) yield return $"cfg_strength: must be a finite number >= 0, found {CfgStrength}";
        if (!double.IsFinite(CfgIntervalStart) || CfgIntervalStart < 0 || CfgIntervalStart > 1)
            yield return $"cfg_interval[0]: must be in [0, 1], found {CfgIntervalStart}";
        if (!double.IsFinite(CfgIntervalEnd) || CfgIntervalEnd < 0 || CfgIntervalEnd > 1)
            yield return $"cfg_interval[1]: must be in [0, 1], found {CfgIntervalEnd}";
        if (CfgIntervalStart > CfgIntervalEnd) yield return $"cfg_interval: is reversed, [{CfgIntervalStart}, {CfgIntervalEnd}]";
        if (ExplicitGrid is null && (!double.IsFinite(RescaleT) || RescaleT <= 0)) yield return $"rescale_t: must be a finite number > 0, found {RescaleT}";
        if (!double.IsFinite(SigmaMin) || SigmaMin < 0 || SigmaMin >= 1) yield return $"sigma_min: must be in [0, 1), found {SigmaMin}";
        if (!Enum.IsDefined(Solver)) yield return $"solver: unknown solver {Solver}";
    }

    /// <summary>Checks every setting: 1 ≤ steps ≤ <see cref="MaxSteps"/>, cfg_strength ≥ 0, the guidance interval inside
    /// [0, 1] and not reversed, rescale_t &gt; 0, σ_min in [0, 1).</summary>
    /// <exception cref="ArgumentException">Every invalid setting, in one message.</exception>
    public void Validate()
    {
        var problems = Problems().ToList();
        if (problems.Count > 0) throw new ArgumentException($"invalid stage sampler settings: {string.Join("; ", problems)}.");
    }

    /// <summary>
    /// Reads a sampler entry of TRELLIS's <c>pipeline.json</c>: <c>{"name": "FlowEuler…Sampler", "args": {"sigma_min": …},
    /// "params": {"steps", "cfg_strength", "cfg_interval", "rescale_t"}}</c>. A missing param takes the default of TRELLIS's
    /// <c>sample()</c>: steps 50, rescale_t 1, cfg_strength 3 and cfg_interval [0, 1] (no guidance for <c>FlowEulerSampler</c>).
    /// </summary>
    /// <param name="sampler">The sampler entry.</param>
    /// <param name="source">Names the file (and key) in error messages.</param>
    /// <exception cref="InvalidDataException">An unknown sampler class, a value of the wrong JSON type or out of range
    /// (negative steps or guidance, a reversed interval, rescale_t ≤ 0, σ_min ≥ 1, more than <see cref="MaxSteps"/> steps); the
    /// message names <paramref name="source"/> and every offending key.</exception>
    public static StageSampler FromPipelineJson(JsonElement sampler, string source = "pipeline.json")
    {
        var reader = new PipelineJson(source);
        var s = Read(reader, sampler, "");
        reader.ThrowIfAny();
        return s!;
    }

    /// <summary>
    /// This sampler as a <c>pipeline.json</c> entry (TRELLIS's <c>FlowEulerGuidanceIntervalSampler</c>; what
    /// <see cref="FromPipelineJson"/> reads back to an equal sampler).
    /// </summary>
    /// <exception cref="NotSupportedException">Heun or an explicit grid: TRELLIS's samplers cannot express them.</exception>
    internal System.Text.Json.Nodes.JsonObject ToPipelineJson()
    {
        if (Solver != StageSolver.Euler || ExplicitGrid is not null)
            throw new NotSupportedException("only a uniform-grid Euler sampler can be written as a TRELLIS pipeline.json sampler.");
        return new System.Text.Json.Nodes.JsonObject
        {
            ["name"] = "FlowEulerGuidanceIntervalSampler",
            ["args"] = new System.Text.Json.Nodes.JsonObject { ["sigma_min"] = SigmaMin },
            ["params"] = new System.Text.Json.Nodes.JsonObject
            {
                ["steps"] = Steps, ["cfg_strength"] = CfgStrength,
                ["cfg_interval"] = new System.Text.Json.Nodes.JsonArray(CfgIntervalStart, CfgIntervalEnd), ["rescale_t"] = RescaleT,
            },
        };
    }

    internal static StageSampler? Read(PipelineJson reader, JsonElement sampler, string path)
    {
        string Key(string k) => path.Length == 0 ? k : $"{path}.{k}";
        if (sampler.ValueKind != JsonValueKind.Object)
        {
            reader.Add(path.Length == 0 ? "sampler" : path, $"must be an object, found {PipelineJson.Kind(sampler)}");
            return null;
        }
        string? name = reader.String(sampler, path, "name", required: true);
        if (name is not (null or "FlowEulerSampler" or "FlowEulerCfgSampler" or "FlowEulerGuidanceIntervalSampler"))
            reader.Add(Key("name"), $"unknown sampler class '{name}' (expected FlowEulerSampler, FlowEulerCfgSampler or FlowEulerGuidanceIntervalSampler)");
        int before = reader.Problems.Count;
        var s = new StageSampler { Steps = 50, RescaleT = 1.0, CfgStrength = name == "FlowEulerSampler" ? 0 : 3.0, CfgIntervalStart = 0, CfgIntervalEnd = 1 };
        if (reader.TryObject(sampler, path, "args", required: false, out var args) && reader.Number(args, Key("args"), "sigma_min") is { } sm)
            s = s with { SigmaMin = sm };
        if (reader.TryObject(sampler, path, "params", required: false, out var p))
        {
            string pp = Key("params");
            if (reader.Integer(p, pp, "steps", int.MinValue, int.MaxValue) is { } steps) s = s with { Steps = steps };
            if (reader.Number(p, pp, "rescale_t") is { } rt) s = s with { RescaleT = rt };
            if (name != "FlowEulerSampler" && reader.Number(p, pp, "cfg_strength") is { } cs) s = s with { CfgStrength = cs };
            if (name == "FlowEulerGuidanceIntervalSampler" && reader.Numbers(p, pp, "cfg_interval", required: false, length: 2) is { } ci)
                s = s with { CfgIntervalStart = ci[0], CfgIntervalEnd = ci[1] };
        }
        foreach (var problem in s.Problems())
        {
            var at = problem.IndexOf(':');
            string key = problem[..at] == "sigma_min" ? Key("args") : Key("params");
            reader.Add($"{key}.{problem[..at]}", problem[(at + 2)..]);
        }
        return reader.Problems.Count == before ? s : null;
    }
}
