using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using MdtDist.Core.Training;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>A schedule of both flow stages.</summary>
/// <param name="Name">Name on the command line and in the table.</param>
/// <param name="Description">What it is.</param>
/// <param name="Stage1">Stage-1 sampler.</param>
/// <param name="Stage2">Stage-2 sampler.</param>
public sealed record BenchmarkSchedule(string Name, string Description, StageSampler Stage1, StageSampler Stage2)
{
    /// <summary>
    /// The known schedules. MDT-dist students are trained with <c>p_uncond = 0</c> against a teacher guided at w = 40 / 100,
    /// so they are guidance-distilled: one forward per step (<c>student-1</c>, <c>student-2</c>). The trainers' own snapshot
    /// sampler runs them with CFG 3 (stage 1) and 0.1 (stage 2) on every step, two forwards per step (<c>student-1-cfg</c>).
    /// <c>teacher</c> is TRELLIS-image-large's 25-step guided schedule (44 evaluations per stage); it runs for real only
    /// when asked — the table always extrapolates it from the measured per-evaluation times.
    /// </summary>
    public static IReadOnlyList<BenchmarkSchedule> Known { get; } = new[]
    {
        new BenchmarkSchedule("student-1", "MDT-dist 1×2: 1 step per stage, guidance-distilled (1 forward per step)", StageSampler.Student(1), StageSampler.Student(1)),
        new BenchmarkSchedule("student-2", "MDT-dist 2×2: 2 steps per stage, guidance-distilled", StageSampler.Student(2), StageSampler.Student(2)),
        new BenchmarkSchedule("student-1-cfg", "MDT-dist 1×2 with the trainers' snapshot CFG (3 / 0.1; 2 forwards per step)", StageSampler.Student(1, 3.0), StageSampler.Student(1, 0.1)),
        new BenchmarkSchedule("teacher", "TRELLIS 25 steps, CFG 5 on t ∈ [0.5, 1], rescale 3 (44 evaluations per stage)", StageSampler.TrellisImageLarge, StageSampler.TrellisImageLarge),
    };

    /// <summary>Looks up a schedule by name.</summary>
    /// <exception cref="ArgumentException">An unknown name.</exception>
    public static BenchmarkSchedule Parse(string name) =>
        Known.FirstOrDefault(s => s.Name == name) ?? throw new ArgumentException($"unknown schedule '{name}' (known: {string.Join(", ", Known.Select(s => s.Name))}).", nameof(name));
}

/// <summary>What to run.</summary>
public sealed record TrellisCpuSettings
{
    /// <summary>Network sizes.</summary>
    public NetworkScale Scale { get; init; } = NetworkScale.Large;
    /// <summary>Weight and compute dtype.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>How the dtype was asked for (auto, float32, bfloat16).</summary>
    public string DTypeRequest { get; init; } = "float32";
    /// <summary>Schedules to measure (the teacher row is always extrapolated as well).</summary>
    public IReadOnlyList<BenchmarkSchedule> Schedules { get; init; } = new[] { BenchmarkSchedule.Known[0], BenchmarkSchedule.Known[1] };
    /// <summary>Target voxel count of the stage-2 structure.</summary>
    public int Voxels { get; init; } = 20_000;
    /// <summary>Transformer blocks of every network (null: released depth).</summary>
    public int? Blocks { get; init; }
    /// <summary>Seed of weights and noise.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>Run the decoders after every measured schedule (false: after the first only; later rows reuse its times).</summary>
    public bool DecodeEverySchedule { get; init; }

    /// <summary>Hand the freed native heap back to the kernel before each stage (<see cref="NativeHeap.Trim"/>), so that
    /// each stage's peak and the run's peak count live memory rather than what the allocator kept from earlier stages.</summary>
    public bool TrimHeapBetweenStages { get; init; } = true;
}

/// <summary>Time of one stage.</summary>
/// <param name="Stage">Stage name.</param>
/// <param name="WallSeconds">Wall-clock seconds.</param>
/// <param name="CpuSeconds">Process CPU seconds (user + sys) spent meanwhile.</param>
/// <param name="Evaluations">Network evaluations (flows only; 0 otherwise).</param>
/// <param name="Measured">False when the time is extrapolated or reused from another row.</param>
/// <param name="PeakResidentBytes">Peak resident memory of the process during the stage (VmHWM after resetting it through
/// <c>/proc/self/clear_refs</c> at the stage's start; where the kernel refuses the reset, the process peak so far); 0 when not measured.</param>
public sealed record StageTime(string Stage, double WallSeconds, double CpuSeconds, int Evaluations, bool Measured, long PeakResidentBytes = 0);

/// <summary>One schedule's row.</summary>
/// <param name="Schedule">Schedule name.</param>
/// <param name="Description">What it is.</param>
/// <param name="Stages">Per-stage times.</param>
public sealed record ScheduleResult(string Schedule, string Description, IReadOnlyList<StageTime> Stages)
{
    /// <summary>Sum of the stage wall times.</summary>
    public double TotalSeconds => Stages.Sum(s => s.WallSeconds);
    /// <summary>Network evaluations of both flows.</summary>
    public int FlowEvaluations => Stages.Sum(s => s.Evaluations);
}

/// <summary>The whole report.</summary>
public sealed record TrellisCpuReport
{
    /// <summary>Network sizes.</summary>
    public required string Scale { get; init; }
    /// <summary>Compute dtype.</summary>
    public required string DType { get; init; }
    /// <summary>The request it came from.</summary>
    public required string DTypeRequest { get; init; }
    /// <summary>Native bf16 on this CPU.</summary>
    public required bool NativeBFloat16 { get; init; }
    /// <summary>CPU model name.</summary>
    public required string Cpu { get; init; }
    /// <summary>libtorch intra-op threads.</summary>
    public required int Threads { get; init; }
    /// <summary>Logical processors.</summary>
    public required int Processors { get; init; }
    /// <summary>OMP_NUM_THREADS and MALLOC_* settings seen.</summary>
    public required IReadOnlyDictionary<string, string> Environment { get; init; }
    /// <summary>Transformer block override.</summary>
    public int? Blocks { get; init; }
    /// <summary>Stage-2 voxels.</summary>
    public required long Voxels { get; init; }
    /// <summary>Outer radius of the shell.</summary>
    public required double ShellRadius { get; init; }
    /// <summary>Per network: parameters and bytes held.</summary>
    public required IReadOnlyList<NetworkSize> Networks { get; init; }
    /// <summary>Seconds to build and randomise the networks (not in the totals).</summary>
    public required double BuildSeconds { get; init; }
    /// <summary>Rows.</summary>
    public required IReadOnlyList<ScheduleResult> Results { get; init; }
    /// <summary>Whether the freed native heap was handed back to the kernel before each stage.</summary>
    public bool HeapTrimmedBetweenStages { get; init; }

    /// <summary>Peak resident memory of the process (VmHWM), bytes.</summary>
    public required long PeakResidentBytes { get; init; }
    /// <summary>Resident memory after building the networks (VmRSS), bytes.</summary>
    public required long ResidentAfterBuildBytes { get; init; }
    /// <summary>1-minute load average before and after.</summary>
    public required double[] LoadAverage { get; init; }
    /// <summary>Mesh extracted in the first schedule: vertices and faces.</summary>
    public required long[] MeshSize { get; init; }
    /// <summary>Gaussians decoded in the first schedule.</summary>
    public required long GaussianCount { get; init; }
    /// <summary>Voxels the random structure decoder marked (not used: stage 2 runs on the shell).</summary>
    public required long RandomStructureVoxels { get; init; }
}

/// <summary>Parameters and bytes of one network.</summary>
public sealed record NetworkSize(string Name, long Parameters, long Bytes);

/// <summary>
/// Runs TRELLIS-image-large's whole architecture on the CPU and times it stage by stage: DINOv2 on one 518² image,
/// stage-1 flow, structure decoder, stage-2 flow on a fixed shell (<see cref="StructureShapes"/>), Gaussian decoder,
/// mesh decoder, FlexiCubes. The teacher's time is extrapolated: 44 × the measured time of one evaluation per stage.
/// </summary>
public static class TrellisCpuBenchmark
{
    /// <summary>Runs the benchmark.</summary>
    /// <param name="settings">What to run.</param>
    /// <param name="progress">Receives one line per stage as it starts.</param>
    /// <param name="ct">Cancellation.</param>
    public static TrellisCpuReport Run(TrellisCpuSettings settings, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Schedules.Count == 0) throw new ArgumentException("at least one schedule is needed.", nameof(settings));
        var clock = new StageClock(settings.TrimHeapBetweenStages);
        double load0 = LoadAverage();
        using var noGrad = torch.no_grad();
        progress?.Report("building the networks");
        var build = Stopwatch.StartNew();
        using var nets = TrellisCpuNetworks.Build(settings.Scale, settings.DType, settings.Blocks, settings.Seed);
        double buildSeconds = build.Elapsed.TotalSeconds;
        long rssAfterBuild = ProcessPeakMemory.ResidentBytes;
        ct.ThrowIfCancellationRequested();

        var (coords, radius) = StructureShapes.ShellWithVoxelCount(settings.Voxels);
        using var _coords = coords;
        var pipeline = nets.Pipeline;

        // the image: a seeded synthetic 518² picture (an object-like disc on black, as TRELLIS's preprocessing leaves it)
        progress?.Report("image encoder (DINOv2)");
        using var image = SyntheticImage(settings.Seed);
        using var encoder = new ImageConditionEncoder(nets.ImageEncoder, ownsModel: false);
        Tensor tokens = null!;
        var dinoTime = clock.Timed("image encoder (DINOv2)", 0, () => tokens = encoder.EncodePreprocessed(new[] { image }));
        using var _tokens = tokens;
        var condition = TrellisCondition.FromImageFeatures(tokens);
        using var _neg = condition.NegCond;

        var rows = new List<ScheduleResult>();
        List<StageTime>? decoderTimes = null;
        long[] meshSize = Array.Empty<long>();
        long gaussianCount = 0, randomVoxels = 0;
        foreach (var schedule in settings.Schedules)
        {
            ct.ThrowIfCancellationRequested();
            var stages = new List<StageTime> { dinoTime };
            var opts1 = new TrellisStageOptions { Sampler = schedule.Stage1, Seed = settings.Seed, CancellationToken = ct };
            progress?.Report($"{schedule.Name}: stage-1 flow ({schedule.Stage1.Evaluations()} evaluations)");
            Tensor z = null!;
            int evals1 = 0;
            stages.Add(clock.Timed("stage-1 flow", schedule.Stage1.Evaluations(), () =>
            {
                var r = pipeline.SampleSparseStructure(condition, 1, opts1);
                z = r.Result;
                evals1 = r.Evaluations;
            }));
            using var _z = z;
            progress?.Report($"{schedule.Name}: structure decoder");
            Tensor occupied = null!;
            stages.Add(clock.Timed("structure decoder", 0, () => occupied = pipeline.DecodeOccupancy(z)));
            randomVoxels = occupied.shape[0];
            occupied.Dispose();

            progress?.Report($"{schedule.Name}: stage-2 flow ({schedule.Stage2.Evaluations()} evaluations, {coords.shape[0]} voxels)");
            SparseTensor slat = null!;
            var opts2 = new TrellisStageOptions { Sampler = schedule.Stage2, Seed = settings.Seed + 1, CancellationToken = ct };
            stages.Add(clock.Timed("stage-2 flow", schedule.Stage2.Evaluations(), () => slat = pipeline.SampleStructuredLatent(condition, coords, opts2).Result));
            try
            {
                if (decoderTimes is null || settings.DecodeEverySchedule)
                {
                    var dec = new List<StageTime>();
                    progress?.Report($"{schedule.Name}: Gaussian decoder");
                    IReadOnlyList<Gaussians> gs = null!;
                    dec.Add(clock.Timed("Gaussian decoder", 0, () => gs = pipeline.DecodeGaussians(slat)));
                    gaussianCount = gs.Sum(g => g.Xyz.shape[0]);
                    foreach (var g in gs) g.Dispose();

                    progress?.Report($"{schedule.Name}: mesh decoder");
                    IReadOnlyList<FlexiCubesInputs> inputs = null!;
                    dec.Add(clock.Timed("mesh decoder", 0, () =>
                    {
                        using var scope = torch.NewDisposeScope();
                        inputs = pipeline.MeshDecoder!.forward(slat);
                    }));
                    progress?.Report($"{schedule.Name}: FlexiCubes mesh extraction");
                    try
                    {
                        dec.Add(clock.Timed("mesh extraction (FlexiCubes)", 0, () =>
                        {
                            foreach (var input in inputs)
                            {
                                using var scope = torch.NewDisposeScope();
                                using var extracted = FlexiCubes.Extract(input);
                                using var mesh = extracted.ToMesh();
                                meshSize = new[] { mesh.VertexCount, mesh.FaceCount };
                            }
                        }));
                    }
                    finally
                    {
                        foreach (var i in inputs) i.Dispose();
                    }
                    decoderTimes ??= dec;
                    stages.AddRange(dec);
                }
                else
                {
                    stages.AddRange(decoderTimes.Select(d => d with { Measured = false }));
                }
            }
            finally
            {
                slat.Feats.Dispose();
            }
            _ = evals1;
            rows.Add(new ScheduleResult(schedule.Name, schedule.Description, stages));
        }

        if (!settings.Schedules.Any(s => s.Name == "teacher"))
            rows.Add(ExtrapolatedTeacher(rows));

        return new TrellisCpuReport
        {
            Scale = settings.Scale.ToString(),
            DType = settings.DType.ToString(),
            DTypeRequest = settings.DTypeRequest,
            NativeBFloat16 = CpuFeatures.HasNativeBFloat16,
            Cpu = CpuModel(),
            Threads = torch.get_num_threads(),
            Processors = System.Environment.ProcessorCount,
            Environment = new[] { "OMP_NUM_THREADS", "MALLOC_ARENA_MAX", "LD_PRELOAD", "MALLOC_CONF" }
                .Where(k => System.Environment.GetEnvironmentVariable(k) is not null)
                .ToDictionary(k => k, k => System.Environment.GetEnvironmentVariable(k)!),
            Blocks = settings.Blocks,
            Voxels = coords.shape[0],
            ShellRadius = radius,
            Networks = nets.Sizes().Select(s => new NetworkSize(s.Name, s.Parameters, s.Bytes)).ToList(),
            BuildSeconds = buildSeconds,
            Results = rows,
            PeakResidentBytes = clock.PeakBytes,
            HeapTrimmedBetweenStages = settings.TrimHeapBetweenStages,
            ResidentAfterBuildBytes = rssAfterBuild,
            LoadAverage = new[] { load0, LoadAverage() },
            MeshSize = meshSize,
            GaussianCount = gaussianCount,
            RandomStructureVoxels = randomVoxels,
        };
    }

    /// <summary>The teacher row: each flow stage is 44 × the per-evaluation time of the first measured row; the other
    /// stages are that row's.</summary>
    internal static ScheduleResult ExtrapolatedTeacher(IReadOnlyList<ScheduleResult> measured)
    {
        var basis = measured[0];
        var teacher = BenchmarkSchedule.Parse("teacher");
        var stages = basis.Stages.Select(s =>
        {
            if (s.Evaluations == 0) return s with { Measured = false };
            int n = s.Stage == "stage-1 flow" ? teacher.Stage1.Evaluations() : teacher.Stage2.Evaluations();
            return new StageTime(s.Stage, s.WallSeconds / s.Evaluations * n, s.CpuSeconds / s.Evaluations * n, n, false, s.PeakResidentBytes);
        }).ToList();
        return new ScheduleResult("teacher (extrapolated)", teacher.Description + $"; per-evaluation times of {basis.Schedule}", stages);
    }

    /// <summary>
    /// Times the stages of one run: wall and CPU seconds, and the peak resident memory of each (the kernel's mark reset at
    /// the stage's start, after handing freed heap back when <paramref name="trimHeap"/>); <see cref="PeakBytes"/> is the
    /// run's peak, the build included.
    /// </summary>
    private sealed class StageClock(bool trimHeap)
    {
        private readonly ProcessPeakMemory _meter = new();
        private long _peak;

        public long PeakBytes => Math.Max(_peak, _meter.PeakBytes);

        public StageTime Timed(string stage, int evaluations, Action action)
        {
            _peak = PeakBytes;
            if (trimHeap) NativeHeap.Trim();
            _meter.ResetPeak();
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            action();
            double wall = sw.Elapsed.TotalSeconds;
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            long peak = _meter.PeakBytes;
            _peak = Math.Max(_peak, peak);
            return new StageTime(stage, wall, cpu, evaluations, true, peak);
        }
    }

    private static Image<Rgb24> SyntheticImage(long seed)
    {
        var rng = new Random((int)seed);
        var img = new Image<Rgb24>(518, 518);
        double cx = 259 + rng.Next(-20, 20), cy = 259 + rng.Next(-20, 20), r = 180;
        for (int y = 0; y < 518; y++)
            for (int x = 0; x < 518; x++)
            {
                double d = Math.Sqrt((x - cx) * (x - cx) + (y - cy) * (y - cy));
                if (d > r) continue;
                double shade = 0.4 + 0.6 * (1 - d / r);
                img[x, y] = new Rgb24((byte)(200 * shade), (byte)(120 * shade + 20 * Math.Sin(x / 9.0)), (byte)(60 * shade + rng.Next(0, 30)));
            }
        return img;
    }


    private static double LoadAverage()
    {
        try
        {
            var text = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg") : "";
            return text.Length == 0 ? double.NaN : double.Parse(text.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return double.NaN;
        }
    }

    private static string CpuModel()
    {
        if (!File.Exists("/proc/cpuinfo")) return "unknown";
        var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
        return line is null ? "unknown" : line[(line.IndexOf(':') + 1)..].Trim();
    }

    // ----------------------------------------------------------------------------------------------------------------

    private static string F(double v, string f = "F1") => v.ToString(f, CultureInfo.InvariantCulture);

    /// <summary>The report as a Markdown table with its context.</summary>
    public static string ToMarkdown(TrellisCpuReport r)
    {
        ArgumentNullException.ThrowIfNull(r);
        var stageNames = r.Results[0].Stages.Select(s => s.Stage).ToList();
        var sb = new StringBuilder();
        sb.AppendLine($"TRELLIS-image-large on the CPU ({r.Scale}{(r.Blocks is { } b ? $", {b} blocks per network" : "")}; {r.DType}, requested {r.DTypeRequest}; native bf16: {(r.NativeBFloat16 ? "yes" : "no")})");
        sb.AppendLine();
        sb.AppendLine($"CPU: {r.Cpu}, {r.Processors} logical processors, {r.Threads} libtorch threads; load average {F(r.LoadAverage[0], "F2")} before, {F(r.LoadAverage[1], "F2")} after; stage 2 on a {r.Voxels}-voxel shell (outer radius {F(r.ShellRadius, "F2")}, thickness {StructureShapes.Thickness}).");
        sb.AppendLine();
        sb.Append("| schedule | flow evaluations |");
        foreach (var s in stageNames) sb.Append($" {s} (s) |");
        sb.AppendLine(" total wall (s) | total CPU (s) |");
        sb.Append("|---|---:|");
        foreach (var _ in stageNames) sb.Append("---:|");
        sb.AppendLine("---:|---:|");
        foreach (var row in r.Results)
        {
            sb.Append($"| {row.Schedule} | {row.FlowEvaluations} |");
            foreach (var s in row.Stages) sb.Append($" {F(s.WallSeconds)}{(s.Measured ? "" : "*")} |");
            sb.AppendLine($" {F(row.TotalSeconds)} | {F(row.Stages.Sum(s => s.CpuSeconds))} |");
        }
        var first = r.Results[0];
        if (first.Stages.Any(s => s.PeakResidentBytes > 0))
        {
            sb.Append($"| peak resident GB during the stage ({first.Schedule}) | |");
            foreach (var s in first.Stages) sb.Append($" {(s.PeakResidentBytes > 0 ? F(s.PeakResidentBytes / 1e9, "F2") : "")} |");
            sb.AppendLine(" | |");
        }
        sb.AppendLine();
        sb.AppendLine("\\* not measured in this row: extrapolated (teacher flows: 44 evaluations per stage × the measured time of one) or reused from the first row (decoders do not depend on the schedule).");
        sb.AppendLine();
        var teacher = r.Results.FirstOrDefault(x => x.Schedule.StartsWith("teacher", StringComparison.Ordinal));
        if (teacher is not null)
            foreach (var row in r.Results.Where(x => x != teacher))
                sb.AppendLine($"- {row.Schedule}: {F(teacher.TotalSeconds / row.TotalSeconds)}× faster than the teacher end to end.");
        sb.AppendLine($"- Peak resident memory (VmHWM): {F(r.PeakResidentBytes / 1e9, "F2")} GB ({(r.HeapTrimmedBetweenStages ? "freed native heap handed back to the kernel before each stage" : "no heap trimming between stages")}); after building the networks {F(r.ResidentAfterBuildBytes / 1e9, "F2")} GB; build + random init {F(r.BuildSeconds)} s (not in the totals).");
        sb.AppendLine($"- Weights: {string.Join("; ", r.Networks.Select(n => $"{n.Name} {F(n.Parameters / 1e6)} M params, {F(n.Bytes / 1e6, "F0")} MB"))}; in all {F(r.Networks.Sum(n => n.Bytes) / 1e9, "F2")} GB.");
        sb.AppendLine($"- Outputs of the first row: {r.GaussianCount} Gaussians; mesh {(r.MeshSize.Length == 2 ? $"{r.MeshSize[0]} vertices, {r.MeshSize[1]} faces" : "not extracted")}; the random structure decoder marked {r.RandomStructureVoxels} voxels (unused).");
        if (r.Environment.Count > 0) sb.AppendLine($"- Environment: {string.Join(", ", r.Environment.Select(kv => $"{kv.Key}={kv.Value}"))}.");
        return sb.ToString();
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The report as JSON.</summary>
    public static string ToJson(TrellisCpuReport r) => JsonSerializer.Serialize(r, JsonOptions);

    /// <summary>Writes <c>results.json</c> and <c>results.md</c> into <paramref name="folder"/>, each through a temporary file and a rename.</summary>
    public static (string Json, string Markdown) Write(TrellisCpuReport r, string folder)
    {
        Directory.CreateDirectory(folder);
        var json = Path.Combine(folder, "results.json");
        var md = Path.Combine(folder, "results.md");
        WriteAtomically(json, ToJson(r));
        WriteAtomically(md, ToMarkdown(r));
        return (json, md);
    }

    /// <summary>Writes <paramref name="text"/> through a temporary file in the same folder and a rename.</summary>
    public static void WriteAtomically(string path, string text)
    {
        var tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "." + Path.GetFileName(path) + "." + Guid.NewGuid().ToString("N") + ".tmp");
        try
        {
            File.WriteAllText(tmp, text);
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
