using MdtDist.Core.Flow;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Sampling;

/// <summary>Progress of a sampling run (no tensors; safe to hand to any <see cref="IProgress{T}"/>).</summary>
/// <param name="Step">Steps completed (1-based after the first step).</param>
/// <param name="TotalSteps">Steps in the run.</param>
/// <param name="T">The time the step started at.</param>
/// <param name="TPrev">The time the step ended at.</param>
/// <param name="Evaluations">Network evaluations so far (guidance counts 2 where it applies).</param>
public sealed record SamplerProgress(int Step, int TotalSteps, double T, double TPrev, int Evaluations);

/// <summary>
/// A completed solver step, handed synchronously to <see cref="SamplerOptions.OnStep"/>. Its tensors are only valid
/// during the callback (clone them to keep them).
/// </summary>
/// <param name="Index">0-based step index.</param>
/// <param name="T">Start time.</param>
/// <param name="TPrev">End time.</param>
/// <param name="X">The latent after the step (x at t_prev).</param>
/// <param name="PredX0">The data prediction made at t (TRELLIS's <c>pred_x_0</c>).</param>
public sealed record SamplerStep(int Index, double T, double TPrev, Tensor X, Tensor PredX0);

/// <summary>Options of a sampling run.</summary>
public sealed class SamplerOptions
{
    /// <summary>Keep every step's x and x0 prediction in the result (<see cref="SampleResult.PredXt"/>, <see cref="SampleResult.PredX0"/>).</summary>
    public bool RecordTrajectory { get; init; }

    /// <summary>Receives step counts and times after every step.</summary>
    public IProgress<SamplerProgress>? Progress { get; init; }

    /// <summary>Called synchronously after every step with the step's tensors (e.g. for previews of x0).</summary>
    public Action<SamplerStep>? OnStep { get; init; }

    /// <summary>Checked before every step; cancellation throws <see cref="OperationCanceledException"/>.</summary>
    public CancellationToken CancellationToken { get; init; }

    /// <summary>Run without autograd (default true). Set false to differentiate through the sampler.</summary>
    public bool NoGrad { get; init; } = true;

    /// <summary>Reject noise that contains NaN or ±inf (default true; costs one reduction).</summary>
    public bool ValidateNoise { get; init; } = true;
}

/// <summary>The result of a sampling run. Dispose it to free the trajectory tensors early.</summary>
public sealed class SampleResult : IDisposable
{
    internal SampleResult(Tensor samples, IReadOnlyList<Tensor> predXt, IReadOnlyList<Tensor> predX0, int evaluations, IReadOnlyList<double> grid)
    {
        Samples = samples; PredXt = predXt; PredX0 = predX0; Evaluations = evaluations; TimeGrid = grid;
    }

    /// <summary>The final x (at the last grid time, normally 0).</summary>
    public Tensor Samples { get; }

    /// <summary>x after each step (empty unless <see cref="SamplerOptions.RecordTrajectory"/>).</summary>
    public IReadOnlyList<Tensor> PredXt { get; }

    /// <summary>The x0 prediction at each step (empty unless <see cref="SamplerOptions.RecordTrajectory"/>).</summary>
    public IReadOnlyList<Tensor> PredX0 { get; }

    /// <summary>Number of network evaluations the run made (through the model it was given).</summary>
    public int Evaluations { get; }

    /// <summary>The time grid that was walked.</summary>
    public IReadOnlyList<double> TimeGrid { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in PredXt) t.Dispose();
        foreach (var t in PredX0) t.Dispose();
    }
}

/// <summary>
/// Base of the few-step ODE solvers: walks a decreasing time grid from noise (t = 1) to data (t = 0), one step per
/// consecutive pair, every step inside its own dispose scope.
/// </summary>
public abstract class FlowSolver
{
    /// <summary>The flow path (for x0 predictions); TRELLIS's σ = 1e-5 by default.</summary>
    public RectifiedFlowPath Path { get; init; } = RectifiedFlowPath.Trellis;

    /// <summary>Network evaluations per step of a plain (unguided) model.</summary>
    public abstract int EvaluationsPerStep { get; }

    /// <summary>
    /// One step from <paramref name="t"/> to <paramref name="tPrev"/>. Returns the new x and the velocity used for the x0 prediction at t.
    /// </summary>
    protected abstract (Tensor X, Tensor V) Step(Func<Latent, double, Tensor> velocity, Latent x, double t, double tPrev);

    /// <summary>Samples from <paramref name="noise"/> along <paramref name="timeGrid"/>.</summary>
    /// <param name="model">The velocity model (wrap it in <see cref="ClassifierFreeGuidance"/> for guidance).</param>
    /// <param name="noise">The starting latent at t = timeGrid[0].</param>
    /// <param name="condition">Passed through to the model.</param>
    /// <param name="timeGrid">A strictly decreasing grid in [0, 1], e.g. <see cref="TimeGrid.Trellis"/>.</param>
    /// <param name="options">Trajectory, progress, callbacks, cancellation.</param>
    /// <exception cref="ArgumentException">Bad grid, noise with NaN/inf, or a model output whose shape differs from the latent.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public SampleResult Sample(IFlowModel model, Latent noise, Tensor? condition, IReadOnlyList<double> timeGrid, SamplerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(noise);
        TimeGrid.Validate(timeGrid, nameof(timeGrid));
        options ??= new SamplerOptions();
        if (options.ValidateNoise)
        {
            using var finite = torch.isfinite(noise.Data).all();
            if (!finite.item<bool>()) throw new ArgumentException("noise contains NaN or infinite values.", nameof(noise));
        }
        int steps = timeGrid.Count - 1;
        int evaluations = 0;
        var predXt = new List<Tensor>();
        var predX0 = new List<Tensor>();
        var device = noise.Data.device;

        Tensor Eval(Latent x, double t)
        {
            // t is handed over in float64 so adapters can scale it exactly (TRELLIS feeds fl32(1000·t), not 1000·fl32(t)).
            using var tt = torch.full(new[] { x.BatchSize }, t, dtype: ScalarType.Float64, device: device);
            var v = model.Velocity(x, tt, condition);
            if (!v.shape.SequenceEqual(x.Data.shape))
                throw new ArgumentException($"the model returned a velocity of shape [{string.Join(", ", v.shape)}] for a latent of shape [{string.Join(", ", x.Data.shape)}].", nameof(model));
            evaluations += model.EvaluationsAt(t);
            return v;
        }

        using var gradMode = options.NoGrad ? torch.no_grad() : null;
        var x = noise.Data.alias();
        var layout = noise.Layout;
        try
        {
            for (int i = 0; i < steps; i++)
            {
                options.CancellationToken.ThrowIfCancellationRequested();
                double t = timeGrid[i], tPrev = timeGrid[i + 1];
                using var scope = torch.NewDisposeScope();
                var xt = new Latent(x, layout);
                var (xNext, v) = Step(Eval, xt, t, tPrev);
                var x0 = Path.PredictX0(xt, torch.full(new[] { xt.BatchSize }, t, dtype: ScalarType.Float64, device: device), v);
                options.OnStep?.Invoke(new SamplerStep(i, t, tPrev, xNext, x0));
                if (options.RecordTrajectory)
                {
                    predXt.Add(xNext.clone().DetachFromDisposeScope());
                    predX0.Add(x0.clone().DetachFromDisposeScope());
                }
                var old = x;
                x = xNext.DetachFromDisposeScope();
                old.Dispose();
                options.Progress?.Report(new SamplerProgress(i + 1, steps, t, tPrev, evaluations));
            }
        }
        catch
        {
            x.Dispose();
            foreach (var p in predXt) p.Dispose();
            foreach (var p in predX0) p.Dispose();
            throw;
        }
        return new SampleResult(x, predXt, predX0, evaluations, timeGrid.ToArray());
    }
}

/// <summary>The Euler solver exactly as TRELLIS steps: x ← x − (t − t_prev)·v(x, t).</summary>
public sealed class EulerSolver : FlowSolver
{
    /// <inheritdoc />
    public override int EvaluationsPerStep => 1;

    /// <inheritdoc />
    protected override (Tensor X, Tensor V) Step(Func<Latent, double, Tensor> velocity, Latent x, double t, double tPrev)
    {
        var v = velocity(x, t);
        return (x.Data - (t - tPrev) * v, v);
    }
}

/// <summary>
/// Heun's second-order method (explicit trapezoid): v₁ = v(x, t), x̃ = x − h·v₁, v₂ = v(x̃, t_prev),
/// x ← x − h·(v₁ + v₂)/2 with h = t − t_prev. Two evaluations per step.
/// </summary>
public sealed class HeunSolver : FlowSolver
{
    /// <inheritdoc />
    public override int EvaluationsPerStep => 2;

    /// <inheritdoc />
    protected override (Tensor X, Tensor V) Step(Func<Latent, double, Tensor> velocity, Latent x, double t, double tPrev)
    {
        double h = t - tPrev;
        var v1 = velocity(x, t);
        var xe = x.Data - h * v1;
        var v2 = velocity(x.With(xe), tPrev);
        return (x.Data - h * 0.5 * (v1 + v2), v1);
    }
}
