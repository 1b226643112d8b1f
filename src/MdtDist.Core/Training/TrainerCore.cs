using System.Diagnostics;
using System.Globalization;
using MdtDist.Core.Distillation;
using MdtDist.Core.Training.Parallel;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// The one training loop behind every trainer (<see cref="MdtDistiller"/>, <see cref="FlowMatchingTrainer"/>): given
/// an objective that turns a micro-batch into a loss, it performs TRELLIS's <c>BasicTrainer.run_step</c> update —
/// gradient accumulation over micro-batches (loss / K), the dynamic loss scale, optional master weights, the
/// data-parallel gradient average, the adaptive clipper, AdamW, the skipped non-finite step and the EMA — and owns
/// checkpoints, resume, logging and progress.
/// </summary>
internal sealed class TrainerCore : IDisposable
{
    private const string ParallelFile = "parallel.json";
    private readonly ILogger _logger;
    private readonly string _what;
    private readonly List<(string Name, Parameter Param)> _modelParams;
    private readonly List<Parameter> _masterParams;
    private readonly bool _ownsMasters;
    private readonly List<List<Tensor>> _ema = new();
    private readonly AdamW _optimizer;
    private readonly Generator _generator;
    private readonly ITrainingCommunicator? _comm;
    private bool _disposed;

    public TrainerCore(IFlowNetwork model, TrainingOptions options, ILogger logger, string what)
    {
        Model = model;
        Options = options;
        _logger = logger;
        _what = what;
        _comm = options.Communicator;
        if (_comm is not null && (_comm.WorldSize < 1 || _comm.Rank < 0 || _comm.Rank >= _comm.WorldSize))
            throw new ArgumentException($"the communicator reports rank {_comm.Rank} of world size {_comm.WorldSize}.", nameof(options));
        _modelParams = model.Module.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)).ToList();
        if (_modelParams.Count == 0) throw new ArgumentException($"the {what} has no trainable parameters.", nameof(model));

        // Every rank starts from rank 0's weights.
        if (_comm is { WorldSize: > 1 }) BroadcastModel();

        if (options.Precision == TrainingPrecision.Fp32MasterWeights)
        {
            using var _ = torch.no_grad();
            _masterParams = _modelParams.Select(p => new Parameter(p.Param.detach().to(MasterDType(p.Param.dtype), copy: true), requires_grad: true)).ToList();
            _ownsMasters = true;
        }
        else
        {
            _masterParams = _modelParams.Select(p => p.Param).ToList();
        }
        UsesLossScale = options.LossScaling switch
        {
            LossScaling.Dynamic => true,
            LossScaling.None => false,
            _ => options.Precision == TrainingPrecision.Fp32MasterWeights && _modelParams.Any(p => p.Param.dtype == ScalarType.Float16),
        };
        LogLossScale = UsesLossScale ? options.InitialLogLossScale : 0.0;

        using (torch.no_grad())
            foreach (var _ in options.EmaRates)
                _ema.Add(_masterParams.Select(p => p.detach().clone().DetachFromDisposeScope()).ToList());

        _optimizer = torch.optim.AdamW(_masterParams, options.LearningRate, options.Beta1, options.Beta2, options.Epsilon, options.WeightDecay);
        if (options.Clipping is { } c) GradClipper = new AdaptiveGradClipper(c.MaxNorm, c.Percentile, c.BufferSize);
        long seed = options.Seed + (_comm?.Rank ?? 0);
        _generator = new Generator((ulong)seed, _masterParams[0].device);
        _generator.manual_seed(seed);
    }

    /// <summary>float32 masters, or the parameter's own dtype when it is wider (float64).</summary>
    internal static ScalarType MasterDType(ScalarType parameter) => parameter == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    public static void Validate(TrainingOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (!(o.LearningRate >= 0) || !double.IsFinite(o.LearningRate)) throw new ArgumentException($"LearningRate must be >= 0, got {o.LearningRate}.", nameof(o));
        if (o.BatchSplit < 1) throw new ArgumentException($"BatchSplit must be >= 1, got {o.BatchSplit}.", nameof(o));
        if (o.EmaRates is null) throw new ArgumentException("EmaRates must not be null (use an empty list).", nameof(o));
        foreach (var r in o.EmaRates)
            if (!(r >= 0 && r <= 1)) throw new ArgumentException($"EMA rates must be in [0, 1], got {r}.", nameof(o));
        if (o.KeepCheckpoints < 1) throw new ArgumentException($"KeepCheckpoints must be >= 1, got {o.KeepCheckpoints}.", nameof(o));
        if (o.CheckpointEvery < 0) throw new ArgumentException($"CheckpointEvery must be >= 0, got {o.CheckpointEvery}.", nameof(o));
        if (!Enum.IsDefined(o.Precision)) throw new ArgumentException($"unknown precision {o.Precision}.", nameof(o));
        if (!Enum.IsDefined(o.LossScaling)) throw new ArgumentException($"unknown loss scaling {o.LossScaling}.", nameof(o));
        if (!double.IsFinite(o.InitialLogLossScale) || !double.IsFinite(o.LossScaleGrowth))
            throw new ArgumentException($"InitialLogLossScale and LossScaleGrowth must be finite, got {o.InitialLogLossScale} and {o.LossScaleGrowth}.", nameof(o));
        if (o.AllReduceBucketBytes < 1) throw new ArgumentException($"AllReduceBucketBytes must be >= 1, got {o.AllReduceBucketBytes}.", nameof(o));
    }

    public IFlowNetwork Model { get; }
    public TrainingOptions Options { get; }
    public AdaptiveGradClipper? GradClipper { get; }
    public long Step { get; private set; }
    public long SkippedSteps { get; private set; }
    public double LogLossScale { get; private set; }
    public bool UsesLossScale { get; }
    public Generator Generator => _generator;
    public IReadOnlyList<Parameter> MasterParameters => _masterParams;
    public int Rank => _comm?.Rank ?? 0;
    public int WorldSize => _comm?.WorldSize ?? 1;

    /// <summary>Seconds spent in gradient all-reduce calls so far (0 without a communicator).</summary>
    public double AllReduceSeconds { get; private set; }

    public double CurrentLearningRate => Options.LearningRate * (Options.LearningRateSchedule?.Invoke(Step) ?? 1.0);

    public IReadOnlyDictionary<string, Tensor> EmaParameters(int index)
    {
        CheckEmaIndex(index);
        return _modelParams.Select((p, i) => (p.Name, _ema[index][i])).ToDictionary(x => x.Name, x => x.Item2);
    }

    public void CopyEmaTo(nn.Module target, int index)
    {
        ArgumentNullException.ThrowIfNull(target);
        CheckEmaIndex(index);
        using var scope = torch.NewDisposeScope();
        var merged = new Dictionary<string, Tensor>(Model.Module.state_dict());
        for (int i = 0; i < _modelParams.Count; i++)
            merged[_modelParams[i].Name] = _ema[index][i].to(_modelParams[i].Param.dtype);
        using (torch.no_grad())
            target.load_state_dict(merged, strict: true);
    }

    /// <summary>Splits a batch into the configured micro-batches.</summary>
    public IReadOnlyList<DistillationBatch> Split(DistillationBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var parts = Options.BatchSplitter is { } splitter ? splitter(batch, Options.BatchSplit) : batch.Split(Options.BatchSplit);
        if (parts is null || parts.Count == 0) throw new InvalidOperationException("the batch splitter returned no micro-batches.");
        return parts;
    }

    /// <summary>
    /// The training loop: runs <see cref="RunStep"/> on the batch of each step until <see cref="Step"/> reaches
    /// <paramref name="totalSteps"/>, checkpointing as configured.
    /// </summary>
    public TrainingProgress? Train(IDistillationDataSource data, long totalSteps, Func<int, DistillationBatch, ObjectiveResult> compute,
        Action<TrainingProgress>? report, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (totalSteps < 0) throw new ArgumentException($"totalSteps must be >= 0, got {totalSteps}.", nameof(totalSteps));
        ThrowIfDisposed();
        TrainingProgress? last = null;
        while (Step < totalSteps)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                if (Options.CheckpointDirectory is { } dir) SaveCheckpoint(dir);
                _logger.LogInformation("Training ({What}) cancelled at step {Step}.", _what, Step);
                cancellationToken.ThrowIfCancellationRequested();
            }
            var batch = data.GetBatch(Step) ?? throw new InvalidOperationException($"the data source returned no batch for step {Step}.");
            last = RunStep(Split(batch), compute, totalSteps);
            report?.Invoke(last);
            if (Options.CheckpointDirectory is { } d && Options.CheckpointEvery > 0 && Step % Options.CheckpointEvery == 0 && Step < totalSteps)
                SaveCheckpoint(d);
        }
        if (last is not null && Options.CheckpointDirectory is { } final) SaveCheckpoint(final);
        return last;
    }

    /// <summary>
    /// One update on the given micro-batches (TRELLIS's <c>run_step</c>): <paramref name="compute"/>(k, micro-batch k)
    /// gives each micro-batch's loss; (loss / K)·2^s is backpropagated (accumulating); with a communicator the model
    /// gradients are averaged over ranks; the gradients (copied to the masters when there are masters) are divided by
    /// 2^s and clipped; when every gradient and loss is finite AdamW steps, the masters are copied to the model and s
    /// grows, otherwise nothing is updated and s drops by 1; then the EMA is updated (also after a skipped step unless
    /// <see cref="TrainingOptions.EmaOnSkippedStep"/> is false).
    /// </summary>
    public TrainingProgress RunStep(IReadOnlyList<DistillationBatch> parts, Func<int, DistillationBatch, ObjectiveResult> compute, long totalSteps)
    {
        ArgumentNullException.ThrowIfNull(parts);
        ArgumentNullException.ThrowIfNull(compute);
        if (parts.Count == 0) throw new ArgumentException("at least one micro-batch is required.", nameof(parts));
        ThrowIfDisposed();
        var watch = Stopwatch.StartNew();
        using var scope = torch.NewDisposeScope();
        Model.Module.train();
        ZeroGrads();

        int k = parts.Count;
        double scale = UsesLossScale ? Math.Pow(2.0, LogLossScale) : 1.0;
        double loss = 0;
        bool finite = true;
        var termNames = new List<string>();
        var termSums = new List<double>();
        var binSums = new double[2 * TimeBins.Count];
        for (int i = 0; i < k; i++)
        {
            using var inner = torch.NewDisposeScope();
            using var microBatchScope = Options.MicroBatchScope?.Invoke();
            var mb = parts[i] ?? throw new ArgumentException($"micro-batch {i} is null.", nameof(parts));
            var res = compute(i, mb);
            double l = ToDouble(res.Loss);
            if (!double.IsFinite(l))
            {
                // TRELLIS still runs the remaining micro-batches; so do we (their draws are consumed the same way), but
                // there is no point in back-propagating a non-finite loss: the step is skipped anyway.
                if (finite) loss = l;
                finite = false;
                continue;
            }
            var scaled = res.Loss / k;
            if (UsesLossScale) scaled = scaled * scale;
            scaled.backward();
            if (finite) loss += l / k;
            for (int j = 0; j < res.Terms.Count; j++)
            {
                int idx = termNames.IndexOf(res.Terms[j].Name);
                if (idx < 0) { termNames.Add(res.Terms[j].Name); termSums.Add(0); idx = termNames.Count - 1; }
                termSums[idx] += ToDouble(res.Terms[j].Value) / k;
            }
            AccumulateBins(binSums, ToArray(res.T), ToArray(res.PerSample));
        }

        if (_comm is { WorldSize: > 1 } comm)
        {
            var reduceWatch = Stopwatch.StartNew();
            AllReduceGradients(comm);
            // One small all-reduce carries the finiteness flag, the losses and the time bins of every rank.
            bool localFinite = finite && GradientsFinite();
            var v = new double[2 + termSums.Count + binSums.Length];
            v[0] = localFinite ? 0 : 1;
            v[1] = double.IsFinite(loss) ? loss : 0;
            for (int j = 0; j < termSums.Count; j++) v[2 + j] = termSums[j];
            Array.Copy(binSums, 0, v, 2 + termSums.Count, binSums.Length);
            comm.AllReduceSum(v);
            AllReduceSeconds += reduceWatch.Elapsed.TotalSeconds;
            finite = v[0] == 0;
            loss = finite ? v[1] / comm.WorldSize : (double.IsFinite(loss) ? double.NaN : loss);
            for (int j = 0; j < termSums.Count; j++) termSums[j] = v[2 + j] / comm.WorldSize;
            Array.Copy(v, 2 + termSums.Count, binSums, 0, binSums.Length);
        }
        else if (finite)
        {
            finite = GradientsFinite();
        }

        double? gradNorm = null;
        if (finite)
        {
            if (_ownsMasters) CopyGradsToMasters(1.0 / scale);
            else if (UsesLossScale) UnscaleGrads(1.0 / scale);
            if (GradClipper is not null)
            {
                gradNorm = GradClipper.Clip(_masterParams);
                if (!double.IsFinite(gradNorm.Value)) finite = false;
            }
        }
        if (finite)
        {
            SetLearningRate();
            _optimizer.step();
            if (_ownsMasters) CopyMastersToModel();
            if (UsesLossScale) LogLossScale += Options.LossScaleGrowth;
        }
        else
        {
            SkippedSteps++;
            if (UsesLossScale) LogLossScale -= 1;
            _logger.LogWarning("Step {Step}: non-finite loss or gradient (loss {Loss}); update skipped ({Skipped} skipped so far).", Step, loss, SkippedSteps);
            gradNorm = null;
        }
        if (finite || Options.EmaOnSkippedStep) UpdateEma();
        ZeroGrads();
        Step++;

        var bins = new SortedDictionary<int, double>();
        for (int b = 0; b < TimeBins.Count; b++)
            if (binSums[2 * b + 1] > 0) bins[b] = binSums[2 * b] / binSums[2 * b + 1];
        var terms = new Dictionary<string, double>();
        for (int j = 0; j < termNames.Count; j++) terms[termNames[j]] = termSums[j];
        var report = new TrainingProgress(Step, totalSteps, loss, terms, gradNorm, GradClipper?.CurrentMaxNorm, !finite, SkippedSteps, LogLossScale, bins, watch.Elapsed);
        if (Options.LogEvery > 0 && Step % Options.LogEvery == 0 && Rank == 0 && _logger.IsEnabled(LogLevel.Information))
        {
            var termText = string.Join(", ", terms.Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key} {kv.Value:G6}")));
            var binText = string.Join(" ", bins.Select(kv => string.Create(CultureInfo.InvariantCulture, $"bin_{kv.Key}={kv.Value:G4}")));
            _logger.LogInformation("Step {Step}: loss {Loss:G6} ({Terms}), grad norm {GradNorm:G4}, clip {Clip:G4}, skipped {Skipped}; {Bins}",
                Step, report.Loss, termText, report.GradNorm, report.ClipMaxNorm, SkippedSteps, binText);
        }
        return report;
    }

    private static void AccumulateBins(double[] sums, double[] t, double[] perSample)
    {
        if (t.Length != perSample.Length) throw new InvalidOperationException($"the objective returned {t.Length} times but {perSample.Length} per-sample losses.");
        var bins = TimeBins.Assign(t);
        for (int i = 0; i < bins.Length; i++)
        {
            if (bins[i] < 0 || bins[i] >= TimeBins.Count) continue;
            sums[2 * bins[i]] += perSample[i];
            sums[2 * bins[i] + 1] += 1;
        }
    }

    private void SetLearningRate()
    {
        double lr = CurrentLearningRate;
        if (!(lr >= 0) || !double.IsFinite(lr)) throw new InvalidOperationException($"the learning-rate schedule gave {lr} at step {Step}.");
        foreach (var g in _optimizer.ParamGroups) g.LearningRate = lr;
    }

    private void ZeroGrads()
    {
        foreach (var (_, p) in _modelParams) { using var g = p.grad; g?.zero_(); }
        if (_ownsMasters) foreach (var p in _masterParams) { using var g = p.grad; g?.zero_(); }
    }

    private bool GradientsFinite()
    {
        using var scope = torch.NewDisposeScope();
        foreach (var (_, p) in _modelParams)
        {
            var g = p.grad;
            if (g is null) continue;
            if (!g.isfinite().all().item<bool>()) return false;
        }
        return true;
    }

    /// <summary>
    /// Averages the model gradients over the ranks: gradients are packed into contiguous buckets of at most
    /// <see cref="TrainingOptions.AllReduceBucketBytes"/> (per dtype and device, in parameter order), each bucket is
    /// summed with one all-reduce, divided by the world size and unpacked. A parameter without a gradient
    /// contributes zeros, so every rank issues the same calls.
    /// </summary>
    private void AllReduceGradients(ITrainingCommunicator comm)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        int i = 0;
        while (i < _modelParams.Count)
        {
            var first = _modelParams[i].Param;
            var members = new List<int>();
            long bytes = 0;
            while (i < _modelParams.Count)
            {
                var p = _modelParams[i].Param;
                long b = p.numel() * p.ElementSize;
                if (p.dtype != first.dtype || p.device_type != first.device_type || (members.Count > 0 && bytes + b > Options.AllReduceBucketBytes)) break;
                members.Add(i);
                bytes += b;
                i++;
            }
            var flat = torch.cat(members.Select(m =>
            {
                var p = _modelParams[m].Param;
                return (p.grad is { } g ? g : torch.zeros_like(p)).reshape(-1);
            }).ToArray()).contiguous();
            comm.AllReduceSum(flat);
            flat.div_(comm.WorldSize);
            long offset = 0;
            foreach (var m in members)
            {
                var p = _modelParams[m].Param;
                var slice = flat.narrow(0, offset, p.numel()).view(p.shape);
                if (p.grad is { } g) g.copy_(slice);
                else p.grad = slice.clone().DetachFromDisposeScope();
                offset += p.numel();
            }
        }
    }

    private void UnscaleGrads(double inverseScale)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var (_, p) in _modelParams) p.grad?.mul_(inverseScale);
    }

    private void CopyGradsToMasters(double inverseScale)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int i = 0; i < _modelParams.Count; i++)
        {
            var g = _modelParams[i].Param.grad;
            var mg = g is null ? torch.zeros_like(_masterParams[i]) : g.to(_masterParams[i].dtype);
            if (inverseScale != 1.0) mg = mg * inverseScale;
            var existing = _masterParams[i].grad;
            if (existing is null) _masterParams[i].grad = mg.DetachFromDisposeScope();
            else existing.copy_(mg);
        }
    }

    private void CopyMastersToModel()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int i = 0; i < _modelParams.Count; i++) _modelParams[i].Param.copy_(_masterParams[i]);
    }

    private void UpdateEma()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int r = 0; r < _ema.Count; r++)
        {
            double rate = Options.EmaRates[r];
            for (int i = 0; i < _masterParams.Count; i++) _ema[r][i].mul_(rate).add_(_masterParams[i], alpha: 1.0 - rate);
        }
    }

    private static double ToDouble(Tensor scalar)
    {
        using var d = scalar.detach().to(ScalarType.Float64).cpu();
        return d.item<double>();
    }

    private static double[] ToArray(Tensor t)
    {
        using var d = t.detach().to(ScalarType.Float64).cpu().contiguous();
        return d.data<double>().ToArray();
    }

    private void CheckEmaIndex(int index)
    {
        if (index < 0 || index >= _ema.Count) throw new ArgumentException($"EMA index {index} is out of range: {_ema.Count} EMA rates are configured.", nameof(index));
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _optimizer.Dispose();
        foreach (var list in _ema) foreach (var t in list) t.Dispose();
        if (_ownsMasters) foreach (var p in _masterParams) p.Dispose();
        _generator.Dispose();
    }

    // ---------------------------------------------------------------- data parallel: state from rank 0

    private void BroadcastModel()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var (_, t) in Model.Module.state_dict()) BroadcastInPlace(t);
    }

    private void BroadcastInPlace(Tensor t)
    {
        var comm = _comm!;
        if (t.is_contiguous()) { comm.Broadcast(t); return; }
        using var c = t.contiguous();
        comm.Broadcast(c);
        t.copy_(c);
    }

    /// <summary>After rank 0 loaded a checkpoint: every rank takes rank 0's complete state (its own generator row).</summary>
    private void SyncFromRoot(Tensor? rngTable)
    {
        var comm = _comm!;
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
        {
            BroadcastModel();
            foreach (var p in _masterParams) if (_ownsMasters) BroadcastInPlace(p);
            foreach (var list in _ema) foreach (var t in list) BroadcastInPlace(t);
        }
        byte[]? opt = null;
        if (comm.Rank == 0)
        {
            using var ms = new MemoryStream();
            using (var bw = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true)) _optimizer.save_state_dict(bw);
            opt = ms.ToArray();
        }
        opt = comm.Broadcast(opt);
        if (comm.Rank != 0)
        {
            using var ms = new MemoryStream(opt);
            using var br = new BinaryReader(ms);
            _optimizer.load_state_dict(br);
        }
        var scalars = new double[] { Step, SkippedSteps, LogLossScale, GradClipper?.CurrentMaxNorm ?? double.NaN, GradClipper?.BufferPosition ?? 0, GradClipper?.BufferLength ?? 0 };
        var scalarBytes = comm.Broadcast(comm.Rank == 0 ? DoublesToBytes(scalars) : null);
        scalars = BytesToDoubles(scalarBytes);
        Step = (long)scalars[0];
        SkippedSteps = (long)scalars[1];
        LogLossScale = scalars[2];
        if (GradClipper is not null)
        {
            var norms = comm.Broadcast(comm.Rank == 0 ? FloatsToBytes(GradClipper.RecentNorms) : null);
            GradClipper.Restore(BytesToFloats(norms), double.IsNaN(scalars[3]) ? null : scalars[3], (int)scalars[4], (int)scalars[5]);
        }
        var table = rngTable ?? torch.zeros(new long[] { comm.WorldSize, _generator.get_state().numel() }, ScalarType.Byte);
        var tableBytes = comm.Broadcast(comm.Rank == 0 ? table.contiguous().data<byte>().ToArray() : null);
        long len = table.shape[1];
        _generator.set_state(torch.tensor(tableBytes.AsSpan((int)(comm.Rank * len), (int)len).ToArray(), ScalarType.Byte));
    }

    /// <summary>Every rank's generator state, as a [world, len] byte table (an all-reduce of disjoint rows).</summary>
    private Tensor GatherRngTable()
    {
        var comm = _comm!;
        var own = _generator.get_state();
        long len = own.numel();
        var table = torch.zeros(new long[] { comm.WorldSize, len }, ScalarType.Float64);
        table[comm.Rank] = own.to(ScalarType.Float64);
        comm.AllReduceSum(table);
        return table.to(ScalarType.Byte);
    }

    private static byte[] DoublesToBytes(double[] v) { var b = new byte[v.Length * 8]; Buffer.BlockCopy(v, 0, b, 0, b.Length); return b; }
    private static double[] BytesToDoubles(byte[] b) { var v = new double[b.Length / 8]; Buffer.BlockCopy(b, 0, v, 0, b.Length); return v; }
    private static byte[] FloatsToBytes(float[] v) { var b = new byte[v.Length * 4]; Buffer.BlockCopy(v, 0, b, 0, b.Length); return b; }
    private static float[] BytesToFloats(byte[] b) { var v = new float[b.Length / 4]; Buffer.BlockCopy(b, 0, v, 0, b.Length); return v; }

    // ---------------------------------------------------------------- checkpoints

    internal Action<string>? CheckpointFileWritten { get; set; }

    public string SaveCheckpoint(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ThrowIfDisposed();
        using var scope = torch.NewDisposeScope();
        Tensor? rngTable = _comm is { WorldSize: > 1 } ? GatherRngTable() : null;
        string path = Path.Combine(Path.GetFullPath(directory), CheckpointStore.FolderName(Step));
        if (Rank == 0)
        {
            var writer = new CheckpointWriter(directory, Step, CheckpointFileWritten);
            writer.WriteTensors(CheckpointFiles.Student, Model.Module.state_dict());
            if (_ownsMasters) writer.WriteTensors(CheckpointFiles.Master, _modelParams.Select((p, i) => (p.Name, (Tensor)_masterParams[i])).ToDictionary(x => x.Name, x => x.Item2));
            for (int r = 0; r < _ema.Count; r++)
                writer.WriteTensors(CheckpointFiles.Ema(r), _modelParams.Select((p, i) => (p.Name, _ema[r][i])).ToDictionary(x => x.Name, x => x.Item2));
            using (var ms = new MemoryStream())
            {
                using (var bw = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true)) _optimizer.save_state_dict(bw);
                writer.WriteBytes(CheckpointFiles.Optimizer, ms.ToArray());
            }
            var state = new Dictionary<string, Tensor> { ["rng"] = _generator.get_state() };
            if (rngTable is not null) state["rng_per_rank"] = rngTable;
            if (GradClipper is not null) state["clip_norms"] = torch.tensor(GradClipper.RecentNorms);
            writer.WriteTensors(CheckpointFiles.State, state);
            writer.WriteJson(ParallelFile, new ParallelInfo { WorldSize = WorldSize, LossScaling = UsesLossScale });
            var info = new CheckpointInfo
            {
                Step = Step,
                SkippedSteps = SkippedSteps,
                LogLossScale = LogLossScale,
                Seed = Options.Seed,
                EmaRates = Options.EmaRates.ToArray(),
                Precision = Options.Precision.ToString(),
                HasClipper = GradClipper is not null,
                ClipCurrentMaxNorm = GradClipper?.CurrentMaxNorm,
                ClipBufferPosition = GradClipper?.BufferPosition ?? 0,
                ClipBufferLength = GradClipper?.BufferLength ?? 0,
                ParameterNames = _modelParams.Select(p => p.Name).ToArray(),
            };
            writer.WriteJson(CheckpointFiles.Trainer, info);
            path = writer.Commit();
            CheckpointStore.Prune(directory, Options.KeepCheckpoints);
            _logger.LogInformation("Checkpoint of step {Step} written to {Path}.", Step, path);
        }
        _comm?.Barrier();
        return path;
    }

    public void LoadCheckpoint(string checkpoint)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpoint);
        ThrowIfDisposed();
        using var scope = torch.NewDisposeScope();
        Tensor? rngTable = null;
        string? error = null;
        if (Rank == 0)
        {
            try { rngTable = LoadLocal(checkpoint); }
            catch (Exception e) when (_comm is { WorldSize: > 1 } && e is InvalidDataException or IOException) { error = e.Message; }
        }
        if (_comm is { WorldSize: > 1 } comm)
        {
            var err = comm.Broadcast(comm.Rank == 0 ? System.Text.Encoding.UTF8.GetBytes(error ?? "") : null);
            if (err.Length > 0) throw new InvalidDataException(System.Text.Encoding.UTF8.GetString(err));
            SyncFromRoot(rngTable);
        }
        _logger.LogInformation("Resumed from checkpoint {Path} at step {Step}.", checkpoint, Step);
    }

    /// <summary>Loads the checkpoint from disk into this process; returns the per-rank generator table (multi-rank checkpoints).</summary>
    private Tensor? LoadLocal(string checkpoint)
    {
        CheckpointStore.Verify(checkpoint);
        var info = CheckpointStore.ReadJson<CheckpointInfo>(Path.Combine(checkpoint, CheckpointFiles.Trainer));
        var parallelPath = Path.Combine(checkpoint, ParallelFile);
        var parallel = File.Exists(parallelPath) ? CheckpointStore.ReadJson<ParallelInfo>(parallelPath) : new ParallelInfo { WorldSize = 1 };
        if (parallel.WorldSize != WorldSize)
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written by a run of {parallel.WorldSize} process(es); this run has {WorldSize}. Resume with the same world size (the per-rank noise streams and batch shards depend on it).");
        if (!info.ParameterNames.SequenceEqual(_modelParams.Select(p => p.Name)))
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written for a {_what} with other trainable parameters.");
        if (info.EmaRates.Length != _ema.Count || !info.EmaRates.SequenceEqual(Options.EmaRates))
            throw new InvalidDataException($"checkpoint '{checkpoint}' has EMA rates [{string.Join(", ", info.EmaRates)}], this trainer [{string.Join(", ", Options.EmaRates)}].");
        if (info.Precision != Options.Precision.ToString())
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written with precision {info.Precision}, this trainer uses {Options.Precision}.");
        if (info.HasClipper != (GradClipper is not null))
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written {(info.HasClipper ? "with" : "without")} gradient clipping; this trainer is configured {(GradClipper is null ? "without" : "with")}.");

        using (torch.no_grad())
        {
            using (var sd = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.Student)))
                sd.LoadInto(Model.Module);
            if (_ownsMasters)
            {
                using var m = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.Master));
                for (int i = 0; i < _masterParams.Count; i++) _masterParams[i].copy_(m.Get(_modelParams[i].Name));
            }
            for (int r = 0; r < _ema.Count; r++)
            {
                using var e = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.Ema(r)));
                for (int i = 0; i < _masterParams.Count; i++) _ema[r][i].copy_(e.Get(_modelParams[i].Name));
            }
        }
        CheckpointStore.ReadBinary(Path.Combine(checkpoint, CheckpointFiles.Optimizer), br => _optimizer.load_state_dict(br));
        Tensor? table = null;
        using (var state = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.State)))
        {
            _generator.set_state(state.Get("rng"));
            if (WorldSize > 1) table = state.Get("rng_per_rank").clone().DetachFromDisposeScope();
            if (GradClipper is not null)
                GradClipper.Restore(state.Get("clip_norms").data<float>().ToArray(), info.ClipCurrentMaxNorm, info.ClipBufferPosition, info.ClipBufferLength);
        }
        Step = info.Step;
        SkippedSteps = info.SkippedSteps;
        LogLossScale = info.LogLossScale;
        return table;
    }

    public bool TryResume(string? directory)
    {
        var dir = directory ?? Options.CheckpointDirectory ?? throw new ArgumentException("no checkpoint folder given or configured.", nameof(directory));
        string? latest = Rank == 0 ? CheckpointStore.FindLatest(dir, _logger) : null;
        if (_comm is { WorldSize: > 1 } comm)
        {
            var bytes = comm.Broadcast(comm.Rank == 0 ? System.Text.Encoding.UTF8.GetBytes(latest ?? "") : null);
            latest = bytes.Length == 0 ? null : System.Text.Encoding.UTF8.GetString(bytes);
        }
        if (latest is null) return false;
        LoadCheckpoint(latest);
        return true;
    }

    private sealed class ParallelInfo
    {
        public int WorldSize { get; set; } = 1;
        public bool LossScaling { get; set; }
    }
}
