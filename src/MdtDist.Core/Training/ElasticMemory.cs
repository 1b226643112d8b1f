using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace MdtDist.Core.Training;

/// <summary>
/// A network whose training memory a <see cref="MemoryController"/> steers (TRELLIS's <c>ElasticModuleMixin</c>): while
/// it trains with gradients enabled it asks the controller for a memory ratio from its input size, recomputes a share of
/// its blocks in backward (<see cref="ActivationCheckpoint"/>) to use about that ratio of its full activation memory,
/// and reports the ratio it used.
/// </summary>
public interface IElasticModule
{
    /// <summary>Attaches <paramref name="controller"/> (null detaches it: the network then keeps every activation).</summary>
    void RegisterMemoryController(MemoryController? controller);
}

/// <summary>Measures a peak of memory use between <see cref="ResetPeak"/> and <see cref="PeakBytes"/>.</summary>
public interface IPeakMemoryMeter
{
    /// <summary>Starts a new measurement.</summary>
    void ResetPeak();

    /// <summary>The most bytes in use since the last <see cref="ResetPeak"/>.</summary>
    long PeakBytes { get; }

    /// <summary>The memory available to the process in bytes (the default budget).</summary>
    long TotalBytes { get; }
}

/// <summary>
/// The process's peak resident set (RSS high-water mark): on Linux <c>VmHWM</c> of <c>/proc/self/status</c>, reset by
/// writing 5 to <c>/proc/self/clear_refs</c>; elsewhere <see cref="System.Diagnostics.Process.PeakWorkingSet64"/>
/// (which cannot be reset). This is what a CPU run of TorchSharp allocates from the operating system; a CUDA run
/// needs a meter of the device's allocator (TRELLIS uses <c>torch.cuda.max_memory_allocated</c>), supplied by the caller.
/// </summary>
public sealed class ProcessPeakMemory : IPeakMemoryMeter
{
    private bool _resettable = OperatingSystem.IsLinux();

    /// <inheritdoc />
    public void ResetPeak()
    {
        if (!_resettable) return;
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { _resettable = false; }
    }

    /// <inheritdoc />
    public long PeakBytes => Status("VmHWM:") ?? CurrentProcess(p => p.PeakWorkingSet64);

    /// <summary>The process's resident set now: <c>VmRSS</c> on Linux, <see cref="System.Diagnostics.Process.WorkingSet64"/> elsewhere.</summary>
    public static long ResidentBytes => Status("VmRSS:") ?? CurrentProcess(p => p.WorkingSet64);

    private static long CurrentProcess(Func<System.Diagnostics.Process, long> read)
    {
        using var p = System.Diagnostics.Process.GetCurrentProcess();
        return read(p);
    }

    /// <summary>A size line of <c>/proc/self/status</c> in bytes; null off Linux or when the line is missing.</summary>
    private static long? Status(string key)
    {
        if (!OperatingSystem.IsLinux()) return null;
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[key.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        return null;
    }

    /// <inheritdoc />
    public long TotalBytes => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
}

/// <summary>
/// TRELLIS's <c>MemoryController</c>: trainers wrap each micro-batch (forward and backward) in <see cref="Record"/>;
/// elastic networks ask <see cref="GetMemRatio"/> for the memory ratio of an input size and report what they used through
/// <see cref="UpdateRunStates"/>.
/// </summary>
public abstract class MemoryController
{
    private long? _runInputSize;
    private readonly List<double> _runMemRatios = new();

    /// <summary>Input size of the forward passes of the current record (null before the first).</summary>
    protected long? RunInputSize => _runInputSize;

    /// <summary>Memory ratios the elastic networks used in the current record.</summary>
    protected IReadOnlyList<double> RunMemRatios => _runMemRatios;

    /// <summary>Starts a record: called by <see cref="Record"/>; derived controllers call it first.</summary>
    protected void BeginRun()
    {
        _runInputSize = null;
        _runMemRatios.Clear();
    }

    /// <summary>Called by an elastic network after a forward pass with the input size and the exact memory ratio it used.</summary>
    /// <exception cref="InvalidOperationException">Another input size within the same record (TRELLIS's check: every
    /// elastic network of a micro-batch sees the same input).</exception>
    public void UpdateRunStates(long inputSize, double memRatio)
    {
        if (_runInputSize is null) _runInputSize = inputSize;
        else if (_runInputSize != inputSize)
            throw new InvalidOperationException($"the input size of elastic networks changed within one record ({_runInputSize} then {inputSize}).");
        _runMemRatios.Add(memRatio);
    }

    /// <summary>Measures one micro-batch (its forward and backward run inside the returned scope).</summary>
    public abstract IDisposable Record();

    /// <summary>The memory ratio in [0, 1] for an input of <paramref name="inputSize"/> rows (1: keep every activation).</summary>
    public abstract double GetMemRatio(long inputSize);
}

/// <summary>
/// The arguments of TRELLIS's <c>LinearMemoryController</c> (Python keyword names in brackets, Python defaults).
/// </summary>
public sealed record LinearMemoryControllerOptions
{
    /// <summary>The name TRELLIS's trainer configs give the controller (<c>elastic.name</c>).</summary>
    public const string ClassName = "LinearMemoryController";

    /// <summary>Samples kept for the fit (<c>buffer_size</c>, 1000).</summary>
    public int BufferSize { get; init; } = 1000;

    /// <summary>Records between fits, each also raising the ratio cap by 0.1 (<c>update_every</c>, 500).</summary>
    public int UpdateEvery { get; init; } = 500;

    /// <summary>Share of the available memory to aim at (<c>target_ratio</c>, 0.8).</summary>
    public double TargetRatio { get; init; } = 0.8;

    /// <summary>The budget in GiB (<c>available_memory</c>; null: what the meter reports as available).</summary>
    public double? AvailableMemoryGiB { get; init; }

    /// <summary>The initial cap on the ratio (<c>max_mem_ratio_start</c>, 0.1).</summary>
    public double MaxMemRatioStart { get; init; } = 0.1;

    /// <summary>Initial fit <c>(k, b)</c> of <c>memory = k·input_size·ratio + b</c> in GiB (<c>params</c>; null: (0, 0),
    /// i.e. random ratios below the cap until the first fit).</summary>
    public (double K, double B)? Params { get; init; }

    /// <summary>
    /// Reads the <c>elastic</c> object of a TRELLIS trainer config: <c>{"name": "LinearMemoryController", "args": {...}}</c>.
    /// </summary>
    /// <param name="elastic">The object.</param>
    /// <param name="key">What the object is called in messages (e.g. <c>trainer.args.elastic</c>).</param>
    /// <exception cref="InvalidDataException">Another controller, an unknown key (<c>device</c> too: the meter is chosen by
    /// the caller) or a value out of range; every problem in one message, naming the keys.</exception>
    public static LinearMemoryControllerOptions FromConfig(JsonNode? elastic, string key = "elastic")
    {
        var errors = new List<string>();
        var o = new LinearMemoryControllerOptions();
        if (elastic is not JsonObject obj)
            throw new InvalidDataException($"{key} must be {{\"name\": \"{ClassName}\", \"args\": {{...}}}}, found {elastic?.ToJsonString() ?? "null"}.");
        foreach (var (k, _) in obj)
            if (k is not ("name" or "args")) errors.Add($"{key}.{k} is not a key of a memory controller config (name, args)");
        if (obj["name"] is not JsonValue n || n.GetValueKind() != JsonValueKind.String || n.GetValue<string>() != ClassName)
            errors.Add($"{key}.name must be \"{ClassName}\" (the only memory controller TRELLIS has), found {obj["name"]?.ToJsonString() ?? "null"}");
        if (obj["args"] is JsonObject args)
        {
            foreach (var (arg, v) in args)
            {
                double Num(double lo, double hi)
                {
                    if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.Number && jv.GetValue<double>() is var d && d >= lo && d <= hi) return d;
                    errors.Add($"{key}.args.{arg} must be a number in [{lo.ToString(CultureInfo.InvariantCulture)}, {hi.ToString(CultureInfo.InvariantCulture)}], found {v?.ToJsonString() ?? "null"}");
                    return double.NaN;
                }
                int Int(int lo, int hi)
                {
                    double d = Num(lo, hi);
                    if (double.IsNaN(d)) return lo;
                    if (d != Math.Floor(d)) { errors.Add($"{key}.args.{arg} must be an integer, found {v!.ToJsonString()}"); return lo; }
                    return (int)d;
                }
                switch (arg)
                {
                    case "buffer_size": o = o with { BufferSize = Int(1, 10_000_000) }; break;
                    case "update_every": o = o with { UpdateEvery = Int(1, int.MaxValue) }; break;
                    case "target_ratio": o = o with { TargetRatio = Num(1e-6, 1) }; break;
                    case "available_memory":
                        o = o with { AvailableMemoryGiB = v is null ? null : Num(1e-6, 1e9) };
                        break;
                    case "max_mem_ratio_start": o = o with { MaxMemRatioStart = Num(0, 1) }; break;
                    case "params":
                        if (v is null) break;
                        if (v is JsonArray { Count: 2 } pa && pa.All(x => x is JsonValue xv && xv.GetValueKind() == JsonValueKind.Number))
                            o = o with { Params = (pa[0]!.GetValue<double>(), pa[1]!.GetValue<double>()) };
                        else errors.Add($"{key}.args.params must be [k, b], found {v.ToJsonString()}");
                        break;
                    case "device":
                        errors.Add($"{key}.args.device is not supported: the memory meter is chosen by the program (process memory on the CPU)");
                        break;
                    default:
                        errors.Add($"{key}.args.{arg} is not an argument of {ClassName} (buffer_size, update_every, target_ratio, available_memory, max_mem_ratio_start, params)");
                        break;
                }
            }
        }
        else if (obj["args"] is not null) errors.Add($"{key}.args must be an object, found {obj["args"]!.ToJsonString()}");
        if (errors.Count > 0) throw new InvalidDataException(string.Join("; ", errors) + ".");
        return o;
    }
}

/// <summary>What a <see cref="LinearMemoryController"/> saw in its last record (TRELLIS's <c>log()</c>).</summary>
/// <param name="K">Fitted GiB per input row at ratio 1.</param>
/// <param name="B">Fitted constant GiB.</param>
/// <param name="MemoryGiB">Peak memory of the last record.</param>
/// <param name="InputSize">Input rows of the last record.</param>
/// <param name="MemRatio">Mean memory ratio the elastic networks used in the last record.</param>
public sealed record MemoryControllerLog(double K, double B, double MemoryGiB, long InputSize, double MemRatio);

/// <summary>
/// TRELLIS's <c>LinearMemoryController</c>: models the peak memory of a micro-batch as
/// <c>memory = k · input_size · mem_ratio + b</c> (GiB), refits <c>(k, b)</c> by least squares over the last
/// <c>buffer_size</c> records every <c>update_every</c> records (raising the ratio cap by 0.1 each time, up to 1), and
/// answers <c>mem_ratio = clamp((available · target_ratio − b) / (k · input_size), 0, cap)</c>; before the first fit
/// (k = 0) a uniform random ratio below the cap.
/// </summary>
/// <remarks>
/// As TRELLIS: the controller state saved in checkpoints is <c>params</c> only (<see cref="StateDict"/>). The random
/// ratios come from a generator seeded here (TRELLIS draws from numpy's global one). The memory ratio changes only what
/// is recomputed in backward, never a gradient, so none of this affects what is trained.
/// </remarks>
public sealed class LinearMemoryController : MemoryController
{
    private readonly IPeakMemoryMeter _meter;
    private readonly double[] _memory, _inputSize, _memRatio;
    private readonly Random _random;
    private int _ptr, _length;

    /// <summary>Creates the controller.</summary>
    /// <param name="options">TRELLIS's arguments.</param>
    /// <param name="meter">Measures each record's peak (default: <see cref="ProcessPeakMemory"/>).</param>
    /// <param name="seed">Seed of the random ratios drawn before the first fit.</param>
    /// <exception cref="ArgumentException">Options out of range.</exception>
    public LinearMemoryController(LinearMemoryControllerOptions? options = null, IPeakMemoryMeter? meter = null, int seed = 0)
    {
        Options = options ?? new LinearMemoryControllerOptions();
        if (Options.BufferSize < 1) throw new ArgumentException($"BufferSize must be >= 1, got {Options.BufferSize}.", nameof(options));
        if (Options.UpdateEvery < 1) throw new ArgumentException($"UpdateEvery must be >= 1, got {Options.UpdateEvery}.", nameof(options));
        if (!(Options.TargetRatio > 0)) throw new ArgumentException($"TargetRatio must be > 0, got {Options.TargetRatio}.", nameof(options));
        if (!(Options.MaxMemRatioStart >= 0 && Options.MaxMemRatioStart <= 1))
            throw new ArgumentException($"MaxMemRatioStart must be in [0, 1], got {Options.MaxMemRatioStart}.", nameof(options));
        _meter = meter ?? new ProcessPeakMemory();
        AvailableMemoryGiB = Options.AvailableMemoryGiB ?? _meter.TotalBytes / (double)(1L << 30);
        if (!(AvailableMemoryGiB > 0)) throw new ArgumentException($"the available memory must be > 0 GiB, got {AvailableMemoryGiB}.", nameof(options));
        _memory = new double[Options.BufferSize];
        _inputSize = new double[Options.BufferSize];
        _memRatio = new double[Options.BufferSize];
        Params = Options.Params ?? (0.0, 0.0);
        MaxMemRatio = Options.MaxMemRatioStart;
        _random = new Random(seed);
    }

    /// <summary>The arguments.</summary>
    public LinearMemoryControllerOptions Options { get; }

    /// <summary>The budget in GiB.</summary>
    public double AvailableMemoryGiB { get; }

    /// <summary>The current fit <c>(k, b)</c>.</summary>
    public (double K, double B) Params { get; private set; }

    /// <summary>The current cap on the ratio.</summary>
    public double MaxMemRatio { get; private set; }

    /// <summary>Records completed.</summary>
    public long Step { get; private set; }

    /// <summary>The last record (null before the first).</summary>
    public MemoryControllerLog? LastLog { get; private set; }

    /// <inheritdoc />
    public override double GetMemRatio(long inputSize)
    {
        var (k, b) = Params;
        if (k == 0) return _random.NextDouble() * MaxMemRatio;
        double pred = (AvailableMemoryGiB * Options.TargetRatio - b) / (k * inputSize);
        return Math.Min(MaxMemRatio, Math.Max(0.0, pred));
    }

    /// <inheritdoc />
    public override IDisposable Record()
    {
        _meter.ResetPeak();
        BeginRun();
        return new RecordScope(this);
    }

    private void EndRecord()
    {
        // A record in which no elastic network ran with gradients has no sample (TRELLIS would fail dividing by zero).
        if (RunInputSize is not long size || RunMemRatios.Count == 0) return;
        double memory = _meter.PeakBytes / (double)(1L << 30);
        double ratio = RunMemRatios.Average();
        _memory[_ptr] = memory;
        _inputSize[_ptr] = size;
        _memRatio[_ptr] = ratio;
        _ptr = (_ptr + 1) % _memory.Length;
        _length = Math.Min(_length + 1, _memory.Length);
        LastLog = new MemoryControllerLog(Params.K, Params.B, memory, size, ratio);
        Step++;
        if (Step % Options.UpdateEvery == 0)
        {
            MaxMemRatio = Math.Min(1.0, MaxMemRatio + 0.1);
            Fit();
        }
    }

    /// <summary>Least-squares line through (input_size · mem_ratio, memory) over the buffer (numpy's <c>polyfit(x, y, 1)</c>).</summary>
    private void Fit()
    {
        int n = _length;
        double mx = 0, my = 0;
        for (int i = 0; i < n; i++) { mx += _inputSize[i] * _memRatio[i]; my += _memory[i]; }
        mx /= n;
        my /= n;
        double sxx = 0, sxy = 0;
        for (int i = 0; i < n; i++)
        {
            double dx = _inputSize[i] * _memRatio[i] - mx;
            sxx += dx * dx;
            sxy += dx * (_memory[i] - my);
        }
        // A degenerate buffer (one distinct x) has no slope; keep the previous fit.
        if (!(sxx > 0)) return;
        double k = sxy / sxx;
        Params = (k, my - k * mx);
    }

    /// <summary>TRELLIS's saved state: <c>{"params": [k, b]}</c>.</summary>
    public JsonObject StateDict() => new() { ["params"] = new JsonArray(Params.K, Params.B) };

    /// <summary>Restores <see cref="StateDict"/>.</summary>
    /// <exception cref="InvalidDataException">No <c>params</c> pair of numbers.</exception>
    public void LoadStateDict(JsonObject state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state["params"] is not JsonArray { Count: 2 } p || p.Any(x => x is not JsonValue v || v.GetValueKind() != JsonValueKind.Number))
            throw new InvalidDataException($"a {LinearMemoryControllerOptions.ClassName} state must be {{\"params\": [k, b]}}, found {state.ToJsonString()}.");
        Params = (p[0]!.GetValue<double>(), p[1]!.GetValue<double>());
    }

    /// <summary>Writes <see cref="StateDict"/> to <paramref name="path"/> (temp file + rename: a kill never leaves half a file).</summary>
    public void SaveState(string path)
    {
        string json = StateDict().ToJsonString();
        MdtDist.Core.IO.AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(json)));
    }

    /// <summary>Restores what <see cref="SaveState"/> wrote.</summary>
    /// <exception cref="InvalidDataException">The file is not such a state; the message names it.</exception>
    public void LoadState(string path)
    {
        var node = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}' is not a JSON object.");
        try { LoadStateDict(node); }
        catch (InvalidDataException e) { throw new InvalidDataException($"'{path}': {e.Message}", e); }
    }

    /// <inheritdoc />
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"LinearMemoryController(target_ratio={Options.TargetRatio}, available_memory={AvailableMemoryGiB})");

    private sealed class RecordScope(LinearMemoryController owner) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            owner.EndRecord();
        }
    }
}
