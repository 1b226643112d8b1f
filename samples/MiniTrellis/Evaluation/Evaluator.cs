using MdtDist.Core.Evaluation;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MiniTrellis.Data;
using MiniTrellis.Model;
using MiniTrellis.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MiniTrellis.Evaluation;

/// <summary>A sampling schedule to evaluate: which flows, how many steps per stage and with what guidance.</summary>
/// <param name="Label">Row label, e.g. "teacher [25, 25]".</param>
/// <param name="Model">"teacher" or "student".</param>
/// <param name="StructureFlow">Stage-1 flow network.</param>
/// <param name="LatentFlow">Stage-2 flow network.</param>
/// <param name="Stage1">Stage-1 sampler.</param>
/// <param name="Stage2">Stage-2 sampler.</param>
public sealed record Schedule(string Label, string Model, SparseStructureFlowModel StructureFlow, SLatFlowModel LatentFlow, StageSampler Stage1, StageSampler Stage2)
{
    /// <summary>Steps per stage.</summary>
    public int[] Steps => new[] { Stage1.Grid().Length - 1, Stage2.Grid().Length - 1 };

    /// <summary>Network evaluations per stage.</summary>
    public int[] Evaluations => new[] { Stage1.Evaluations(), Stage2.Evaluations() };

    /// <summary>TRELLIS's teacher schedule with <paramref name="steps"/> steps: CFG w on t ∈ [0.5, 1], rescale_t 3.</summary>
    public static StageSampler Teacher(int steps, double guidance) => StageSampler.TrellisImageLarge with { Steps = steps, CfgStrength = guidance };
}

/// <summary>Generated shapes of one schedule: the voxels and decoded colours of each sample, and the stage timings.</summary>
public sealed record GeneratedSet(int[] Classes, int[][] Voxels, float[][] Colors, double Stage1Seconds, double Stage2Seconds);

/// <summary>One row of the results table (the <c>rows</c> of results.json).</summary>
public sealed record ResultRow(string Label, string Model, int[] Steps, int[] Evaluations, double SecondsPerSample, double Stage1SecondsPerSample,
    double Stage2SecondsPerSample, double Cov, double Mmd, double Nna, double ClassFidelity, double AppearanceError, int EmptySamples);

/// <summary>
/// Measures generated shapes against the fixed held-out split: coverage, MMD and 1-NNA (<see cref="ShapeMetrics.CompareSets"/>)
/// with the Chamfer distance between the surface points (voxel centres in the unit cube) of the occupied voxels;
/// condition fidelity (share of samples whose nearest held-out shape, by Chamfer, has the requested class);
/// appearance error (mean |decoded colour − <see cref="ShapeDistribution.ColorRule"/>| over voxels and channels).
/// A sample with no voxel counts as Chamfer distance 1 from everything (farther than any two shapes in the unit cube).
/// </summary>
public sealed class Evaluator
{
    private readonly Tensor?[] _refPoints;
    private readonly double[,] _refRef;

    /// <summary>Builds the held-out reference set of <paramref name="perClass"/> shapes per class and its internal distances.</summary>
    public Evaluator(int perClass)
    {
        PerClass = perClass;
        Reference = ShapeDistribution.HeldOut(perClass);
        _refPoints = Reference.Select(s => (Tensor?)ShapeTensors.Points(s.Voxels)).ToArray();
        _refRef = Pairwise(_refPoints, _refPoints, symmetric: true);
    }

    /// <summary>Shapes per class in the reference set and in every generated set.</summary>
    public int PerClass { get; }

    /// <summary>The held-out reference shapes (class-major).</summary>
    public IReadOnlyList<ShapeSample> Reference { get; }

    /// <summary>The requested classes of a generated set: class-major, <see cref="PerClass"/> each.</summary>
    public int[] Classes => Enumerable.Range(0, ShapeDistribution.ClassCount).SelectMany(c => Enumerable.Repeat(c, PerClass)).ToArray();

    private static double Distance(Tensor? a, Tensor? b) => a is null || b is null ? 1.0 : ShapeMetrics.Chamfer(a, b);

    private static double[,] Pairwise(Tensor?[] a, Tensor?[] b, bool symmetric)
    {
        var d = new double[a.Length, b.Length];
        for (int i = 0; i < a.Length; i++)
            for (int j = symmetric ? i + 1 : 0; j < b.Length; j++)
            {
                d[i, j] = Distance(a[i], b[j]);
                if (symmetric) d[j, i] = d[i, j];
            }
        return d;
    }

    /// <summary>Runs a schedule on the evaluation classes with noise seed <paramref name="seed"/> (the same for every schedule).</summary>
    public GeneratedSet Generate(MiniTrellisModels m, Schedule s, long seed, IProgress<TrellisProgress>? progress = null, CancellationToken ct = default)
    {
        var classes = Classes;
        var pipe = new TrellisPipeline(s.StructureFlow, m.StructureDecoder, s.LatentFlow, m.GaussianDecoder, m.Normalization, s.Stage1, s.Stage2);
        using var cond = ClassCondition.Tokens(classes);
        using var run = pipe.Run(cond, new TrellisRunOptions { Seed = seed, NumSamples = classes.Length, Progress = progress, CancellationToken = ct });
        var voxels = new int[classes.Length][];
        var colors = new float[classes.Length][];
        for (int i = 0; i < classes.Length; i++)
        {
            var sample = run.Samples[i];
            voxels[i] = sample.IsEmpty ? Array.Empty<int>() : sample.Coords.to(ScalarType.Int32).contiguous().data<int>().ToArray();
            if (!sample.IsEmpty && sample.Gaussians is { } g)
            {
                using var scope = torch.NewDisposeScope();
                var rgb = (0.5 + AutoencoderTraining.ShC0 * g.FeaturesDc.reshape(-1, 3)).clamp(0, 1).to(ScalarType.Float32).contiguous();
                colors[i] = rgb.data<float>().ToArray();
            }
            else colors[i] = Array.Empty<float>();
        }
        return new GeneratedSet(classes, voxels, colors, run.StructureTime.TotalSeconds, run.LatentTime.TotalSeconds);
    }

    /// <summary>Scores a generated set; <paramref name="s"/> gives the row's label, steps and evaluations.</summary>
    public ResultRow Score(Schedule s, GeneratedSet g) => Score(s.Label, s.Model, s.Steps, s.Evaluations, g);

    /// <summary>Scores a generated set.</summary>
    public ResultRow Score(string label, string model, int[] steps, int[] evaluations, GeneratedSet g)
    {
        int n = g.Voxels.Length;
        var points = g.Voxels.Select(v => v.Length == 0 ? null : (Tensor?)ShapeTensors.Points(v)).ToArray();
        var gg = Pairwise(points, points, symmetric: true);
        var gr = Pairwise(points, _refPoints, symmetric: false);
        foreach (var p in points) p?.Dispose();
        var set = CompareWith(gg, gr);
        int r = Reference.Count, correct = 0;
        for (int i = 0; i < n; i++)
        {
            int best = 0;
            for (int j = 1; j < r; j++) if (gr[i, j] < gr[i, best]) best = j;
            if (Reference[best].Class == g.Classes[i]) correct++;
        }
        double err = 0; int counted = 0;
        for (int i = 0; i < n; i++)
        {
            if (g.Voxels[i].Length == 0 || g.Colors[i].Length != g.Voxels[i].Length) continue;
            var rule = ShapeDistribution.ColorRule(g.Classes[i], g.Voxels[i]);
            double e = 0;
            for (int k = 0; k < rule.Length; k++) e += Math.Abs(rule[k] - g.Colors[i][k]);
            err += e / rule.Length; counted++;
        }
        return new ResultRow(label, model, steps, evaluations, (g.Stage1Seconds + g.Stage2Seconds) / n, g.Stage1Seconds / n, g.Stage2Seconds / n,
            set.Coverage, set.MinimumMatchingDistance, set.OneNearestNeighbourAccuracy, correct / (double)n, counted > 0 ? err / counted : double.NaN,
            g.Voxels.Count(v => v.Length == 0));
    }

    /// <summary>The data-vs-data floor as a result row (class fidelity and colour error of real shapes included).</summary>
    public ResultRow FloorRow()
    {
        var floor = ShapeDistribution.FloorSet(PerClass);
        var set = new GeneratedSet(floor.Select(s => s.Class).ToArray(), floor.Select(s => s.Voxels).ToArray(), floor.Select(s => s.Colors).ToArray(), 0, 0);
        return Score("data vs data (floor)", "data", new[] { 0, 0 }, new[] { 0, 0 }, set);
    }

    /// <summary>The data-vs-data floor: an independent draw of the distribution (same size) against the reference.</summary>
    public SetComparison Floor()
    {
        var floor = ShapeDistribution.FloorSet(PerClass);
        var pts = floor.Select(s => (Tensor?)ShapeTensors.Points(s.Voxels)).ToArray();
        var result = CompareWith(Pairwise(pts, pts, true), Pairwise(pts, _refPoints, false));
        foreach (var p in pts) p?.Dispose();
        return result;
    }

    /// <summary>Set metrics from precomputed distances (items are indices: generated 0..g-1, reference g..g+r-1).</summary>
    private SetComparison CompareWith(double[,] gg, double[,] gr)
    {
        int g = gg.GetLength(0), r = _refRef.GetLength(0);
        double D(int a, int b)
        {
            if (a < g && b < g) return gg[a, b];
            if (a >= g && b >= g) return _refRef[a - g, b - g];
            return a < g ? gr[a, b - g] : gr[b, a - g];
        }
        return ShapeMetrics.CompareSets(Enumerable.Range(0, g).ToArray(), Enumerable.Range(g, r).ToArray(), D);
    }
}
