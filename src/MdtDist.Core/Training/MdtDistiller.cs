using System.Diagnostics;
using System.Globalization;
using MdtDist.Core.Distillation;
using MdtDist.Core.Flow;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// MDT-dist training: a student (initialised from the teacher) is trained with <see cref="MdtDistObjective"/> against
/// a frozen teacher, with AdamW, EMA copies, TRELLIS's adaptive gradient clipping, gradient accumulation, optional
/// float32 master weights, time-binned loss logging, atomic checkpoints and exact resume.
/// <para>
/// Reproducibility: all randomness of the objective comes from the distiller's own <see cref="torch.Generator"/>
/// (seeded by <see cref="MdtDistillerOptions.Seed"/>; its state is checkpointed), and the data of step s comes from
/// <see cref="IDistillationDataSource.GetBatch"/>(s). On the CPU a run that is stopped, checkpointed and resumed
/// produces bit-identical weights to an uninterrupted run.
/// </para>
/// <para>
/// A step whose loss or gradients are not finite changes nothing (no optimizer step, no EMA update, no clipping
/// statistics), is counted in <see cref="SkippedSteps"/>, logged as a warning, and the run continues.
/// </para>
/// </summary>
public sealed class MdtDistiller : IDisposable
{
    private readonly ILogger _logger;
    private readonly List<(string Name, Parameter Param)> _modelParams;
    private readonly List<Parameter> _masterParams;
    private readonly bool _ownsMasters;
    private readonly List<List<Tensor>> _ema = new();
    private readonly AdamW _optimizer;
    private readonly Generator _generator;
    private readonly bool _usesLossScale;
    private bool _disposed;

    /// <summary>Creates a distiller for an already initialised student.</summary>
    /// <param name="teacher">The frozen teacher (any flow model: a network, an analytic field, a guided wrapper).</param>
    /// <param name="student">The student; its module's trainable parameters are optimised.</param>
    /// <param name="objective">The MDT-dist objective.</param>
    /// <param name="options">Training settings.</param>
    /// <param name="logger">Receives step summaries and warnings (none when null).</param>
    /// <exception cref="ArgumentException">An option is out of range or the student has no trainable parameters.</exception>
    public MdtDistiller(IFlowModel teacher, IFlowNetwork student, MdtDistObjective objective, MdtDistillerOptions? options = null, ILogger? logger = null)
    {
        Teacher = teacher ?? throw new ArgumentNullException(nameof(teacher));
        Student = student ?? throw new ArgumentNullException(nameof(student));
        Objective = objective ?? throw new ArgumentNullException(nameof(objective));
        Options = options ?? new MdtDistillerOptions();
        Validate(Options);
        _logger = logger ?? NullLogger.Instance;
        if (ReferenceEquals(teacher, student)) throw new ArgumentException("the teacher and the student must be different objects.", nameof(student));

        _modelParams = student.Module.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)).ToList();
        if (_modelParams.Count == 0) throw new ArgumentException("the student has no trainable parameters.", nameof(student));
        if (teacher is IFlowNetwork tn && _modelParams.Any(mp => tn.Module.parameters().Any(tp => tp.Handle == mp.Param.Handle)))
            throw new ArgumentException("the teacher and the student share parameters; create the student with FromTeacher or a separate instance.", nameof(student));

        if (Options.Precision == TrainingPrecision.Fp32MasterWeights)
        {
            using var _ = torch.no_grad();
            _masterParams = _modelParams.Select(p => new Parameter(p.Param.detach().to(ScalarType.Float32, copy: true), requires_grad: true)).ToList();
            _ownsMasters = true;
            _usesLossScale = _modelParams.Any(p => p.Param.dtype == ScalarType.Float16);
        }
        else
        {
            _masterParams = _modelParams.Select(p => p.Param).ToList();
        }
        LogLossScale = _usesLossScale ? Options.InitialLogLossScale : 0.0;

        using (torch.no_grad())
            foreach (var _ in Options.EmaRates)
                _ema.Add(_masterParams.Select(p => p.detach().clone().DetachFromDisposeScope()).ToList());

        _optimizer = torch.optim.AdamW(_masterParams, Options.LearningRate, Options.Beta1, Options.Beta2, Options.Epsilon, Options.WeightDecay);
        if (Options.Clipping is { } c) GradClipper = new AdaptiveGradClipper(c.MaxNorm, c.Percentile, c.BufferSize);
        _generator = new Generator((ulong)Options.Seed, _masterParams[0].device);
        _generator.manual_seed(Options.Seed);
    }

    /// <summary>
    /// Creates a student from <paramref name="createStudent"/> (a fresh network of the teacher's architecture), copies
    /// the teacher's weights into it (a deep copy: separate storage), freezes the teacher (no gradients, eval mode),
    /// and returns the distiller.
    /// </summary>
    /// <exception cref="ArgumentException">The factory returned the teacher itself or a network whose state dict does not match.</exception>
    public static MdtDistiller FromTeacher(IFlowNetwork teacher, Func<IFlowNetwork> createStudent, MdtDistObjective objective,
        MdtDistillerOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(createStudent);
        var student = createStudent() ?? throw new ArgumentException("the student factory returned null.", nameof(createStudent));
        if (ReferenceEquals(student, teacher) || ReferenceEquals(student.Module, teacher.Module))
            throw new ArgumentException("the student factory must build a new network, not return the teacher.", nameof(createStudent));
        var sd = teacher.Module.state_dict();
        using (torch.no_grad())
            student.Module.load_state_dict(sd, strict: true);
        Freeze(teacher);
        return new MdtDistiller(teacher, student, objective, options, logger);
    }

    /// <summary>Freezes a network: no parameter requires a gradient, and the module is in eval mode.</summary>
    public static void Freeze(IFlowNetwork network)
    {
        ArgumentNullException.ThrowIfNull(network);
        foreach (var p in network.Module.parameters()) p.requires_grad = false;
        network.Module.eval();
    }

    /// <summary>The frozen teacher.</summary>
    public IFlowModel Teacher { get; }

    /// <summary>The student being trained.</summary>
    public IFlowNetwork Student { get; }

    /// <summary>The objective.</summary>
    public MdtDistObjective Objective { get; }

    /// <summary>The settings.</summary>
    public MdtDistillerOptions Options { get; }

    /// <summary>The gradient clipper, or null.</summary>
    public AdaptiveGradClipper? GradClipper { get; }

    /// <summary>Completed steps (skipped ones included).</summary>
    public long Step { get; private set; }

    /// <summary>Steps whose update was skipped because the loss or a gradient was not finite.</summary>
    public long SkippedSteps { get; private set; }

    /// <summary>log2 of the current loss scale (0 unless a float16 student trains with float32 master weights).</summary>
    public double LogLossScale { get; private set; }

    /// <summary>The EMA rates.</summary>
    public IReadOnlyList<double> EmaRates => Options.EmaRates;

    /// <summary>The optimizer's weights (the student's parameters, or their float32 masters), in the student's parameter order.</summary>
    public IReadOnlyList<Parameter> MasterParameters => _masterParams;

    /// <summary>
    /// The EMA weights of rate <see cref="EmaRates"/>[<paramref name="index"/>] by parameter name (live tensors: read, do
    /// not modify).
    /// </summary>
    public IReadOnlyDictionary<string, Tensor> EmaParameters(int index = 0)
    {
        CheckEmaIndex(index);
        return _modelParams.Select((p, i) => (p.Name, _ema[index][i])).ToDictionary(x => x.Name, x => x.Item2);
    }

    /// <summary>Loads the EMA weights of rate index <paramref name="index"/> (and the student's buffers) into <paramref name="target"/>, a module of the student's architecture.</summary>
    public void CopyEmaTo(nn.Module target, int index = 0)
    {
        ArgumentNullException.ThrowIfNull(target);
        CheckEmaIndex(index);
        using var scope = torch.NewDisposeScope();
        var sd = Student.Module.state_dict();
        var merged = new Dictionary<string, Tensor>(sd);
        for (int i = 0; i < _modelParams.Count; i++)
            merged[_modelParams[i].Name] = _ema[index][i].to(_modelParams[i].Param.dtype);
        using (torch.no_grad())
            target.load_state_dict(merged, strict: true);
    }

    /// <summary>
    /// Runs one optimisation step on <paramref name="batch"/> (split into <see cref="MdtDistillerOptions.BatchSplit"/>
    /// micro-batches) and returns its report.
    /// </summary>
    public DistillationProgress TrainStep(DistillationBatch batch) => RunStep(batch, 0);

    /// <summary>
    /// Trains until <see cref="Step"/> reaches <paramref name="totalSteps"/>, drawing the batch of step s from
    /// <paramref name="data"/>. Writes checkpoints as configured. On cancellation a checkpoint is written (when a
    /// checkpoint folder is configured) and <see cref="OperationCanceledException"/> is thrown; resuming from it
    /// continues the run exactly.
    /// </summary>
    /// <returns>The report of the last step, or null if no step was run.</returns>
    public DistillationProgress? Train(IDistillationDataSource data, long totalSteps, IProgress<DistillationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (totalSteps < 0) throw new ArgumentException($"totalSteps must be >= 0, got {totalSteps}.", nameof(totalSteps));
        ThrowIfDisposed();
        DistillationProgress? last = null;
        while (Step < totalSteps)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                if (Options.CheckpointDirectory is { } dir) SaveCheckpoint(dir);
                _logger.LogInformation("Distillation cancelled at step {Step}.", Step);
                cancellationToken.ThrowIfCancellationRequested();
            }
            var batch = data.GetBatch(Step) ?? throw new InvalidOperationException($"the data source returned no batch for step {Step}.");
            last = RunStep(batch, totalSteps);
            progress?.Report(last);
            if (Options.CheckpointDirectory is { } d && Options.CheckpointEvery > 0 && Step % Options.CheckpointEvery == 0 && Step < totalSteps)
                SaveCheckpoint(d);
        }
        if (last is not null && Options.CheckpointDirectory is { } final) SaveCheckpoint(final);
        return last;
    }

    private DistillationProgress RunStep(DistillationBatch batch, long totalSteps)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ThrowIfDisposed();
        var watch = Stopwatch.StartNew();
        using var scope = torch.NewDisposeScope();
        Student.Module.train();
        ZeroGrads();

        var parts = Options.BatchSplitter is { } splitter ? splitter(batch, Options.BatchSplit) : batch.Split(Options.BatchSplit);
        if (parts.Count == 0) throw new InvalidOperationException("the batch splitter returned no micro-batches.");
        double scale = Math.Pow(2.0, LogLossScale);
        double loss = 0, lossVm = 0, lossVd = 0;
        bool hasVm = false, hasVd = false, finite = true;
        var times = new List<double>();
        var perSample = new List<double>();
        foreach (var mb in parts)
        {
            using var inner = torch.NewDisposeScope();
            var terms = Objective.Compute(Student, Teacher, mb.X0, mb.Condition, _generator, mb.NegativeCondition);
            double l = ToDouble(terms.Loss);
            if (!double.IsFinite(l)) { finite = false; loss = l; break; }
            var scaled = terms.Loss / parts.Count;
            if (_usesLossScale) scaled = scaled * scale;
            scaled.backward();
            loss += l / parts.Count;
            if (terms.LossVm is { } vm) { hasVm = true; lossVm += ToDouble(vm) / parts.Count; }
            if (terms.LossVd is { } vd) { hasVd = true; lossVd += ToDouble(vd) / parts.Count; }
            times.AddRange(ToArray(terms.T));
            perSample.AddRange(ToArray(terms.PerSample));
        }
        if (finite) finite = GradientsFinite();

        double? gradNorm = null;
        if (finite)
        {
            if (_ownsMasters) CopyGradsToMasters(1.0 / scale);
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
            UpdateEma();
            if (_usesLossScale) LogLossScale += Options.LossScaleGrowth;
        }
        else
        {
            SkippedSteps++;
            if (_usesLossScale) LogLossScale -= 1;
            _logger.LogWarning("Step {Step}: non-finite loss or gradient (loss {Loss}); update skipped ({Skipped} skipped so far).", Step, loss, SkippedSteps);
            gradNorm = null;
        }
        ZeroGrads();
        Step++;

        var bins = TimeBins.MeanPerBin(times, perSample);
        var report = new DistillationProgress(Step, totalSteps, loss, hasVm ? lossVm : null, hasVd ? lossVd : null,
            gradNorm, GradClipper?.CurrentMaxNorm, !finite, SkippedSteps, bins, watch.Elapsed);
        if (Options.LogEvery > 0 && Step % Options.LogEvery == 0 && _logger.IsEnabled(LogLevel.Information))
        {
            var binText = string.Join(" ", bins.Select(kv => string.Create(CultureInfo.InvariantCulture, $"bin_{kv.Key}={kv.Value:G4}")));
            _logger.LogInformation("Step {Step}: loss {Loss:G6} (vm {LossVm:G6}, vd {LossVd:G6}), grad norm {GradNorm:G4}, clip {Clip:G4}, skipped {Skipped}; {Bins}",
                Step, report.Loss, report.LossVm, report.LossVd, report.GradNorm, report.ClipMaxNorm, SkippedSteps, binText);
        }
        return report;
    }

    /// <summary>The learning rate of the next step.</summary>
    public double CurrentLearningRate => Options.LearningRate * (Options.LearningRateSchedule?.Invoke(Step) ?? 1.0);

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

    private void CopyGradsToMasters(double inverseScale)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int i = 0; i < _modelParams.Count; i++)
        {
            var g = _modelParams[i].Param.grad;
            var mg = g is null ? torch.zeros_like(_masterParams[i]) : g.to(ScalarType.Float32);
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

    private static void Validate(MdtDistillerOptions o)
    {
        if (!(o.LearningRate >= 0) || !double.IsFinite(o.LearningRate)) throw new ArgumentException($"LearningRate must be >= 0, got {o.LearningRate}.", nameof(o));
        if (o.BatchSplit < 1) throw new ArgumentException($"BatchSplit must be >= 1, got {o.BatchSplit}.", nameof(o));
        if (o.EmaRates is null) throw new ArgumentException("EmaRates must not be null (use an empty list).", nameof(o));
        foreach (var r in o.EmaRates)
            if (!(r >= 0 && r <= 1)) throw new ArgumentException($"EMA rates must be in [0, 1], got {r}.", nameof(o));
        if (o.KeepCheckpoints < 1) throw new ArgumentException($"KeepCheckpoints must be >= 1, got {o.KeepCheckpoints}.", nameof(o));
        if (o.CheckpointEvery < 0) throw new ArgumentException($"CheckpointEvery must be >= 0, got {o.CheckpointEvery}.", nameof(o));
        if (!Enum.IsDefined(o.Precision)) throw new ArgumentException($"unknown precision {o.Precision}.", nameof(o));
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Releases the optimizer, EMA copies, master weights and the generator (not the networks).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _optimizer.Dispose();
        foreach (var list in _ema) foreach (var t in list) t.Dispose();
        if (_ownsMasters) foreach (var p in _masterParams) p.Dispose();
        _generator.Dispose();
    }

    // ---------------------------------------------------------------- checkpoints

    /// <summary>Test hook: called after each checkpoint file is written (before the manifest); throwing simulates a crash.</summary>
    internal Action<string>? CheckpointFileWritten { get; set; }

    /// <summary>
    /// Writes a checkpoint of everything a resume needs (student, float32 masters, EMA copies, AdamW state, clipper
    /// statistics, generator state, step counters) as the folder <c>step-NNNNNNNNN</c> under
    /// <paramref name="directory"/>. The files are written into a hidden temporary folder, a manifest with their
    /// sizes and SHA-256 hashes is written last, and the folder is then renamed into place, so a crash at any point
    /// leaves every earlier checkpoint intact and never exposes a partial one. Older checkpoints beyond
    /// <see cref="MdtDistillerOptions.KeepCheckpoints"/> are deleted afterwards.
    /// </summary>
    /// <returns>The checkpoint folder.</returns>
    public string SaveCheckpoint(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ThrowIfDisposed();
        using var scope = torch.NewDisposeScope();
        var writer = new CheckpointWriter(directory, Step, CheckpointFileWritten);
        writer.WriteTensors(CheckpointFiles.Student, Student.Module.state_dict());
        if (_ownsMasters) writer.WriteTensors(CheckpointFiles.Master, NamedMasters());
        for (int r = 0; r < _ema.Count; r++)
            writer.WriteTensors(CheckpointFiles.Ema(r), _modelParams.Select((p, i) => (p.Name, _ema[r][i])).ToDictionary(x => x.Name, x => x.Item2));
        using (var ms = new MemoryStream())
        {
            using (var bw = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true)) _optimizer.save_state_dict(bw);
            writer.WriteBytes(CheckpointFiles.Optimizer, ms.ToArray());
        }
        var state = new Dictionary<string, Tensor> { ["rng"] = _generator.get_state() };
        if (GradClipper is not null) state["clip_norms"] = torch.tensor(GradClipper.RecentNorms);
        writer.WriteTensors(CheckpointFiles.State, state);
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
        var path = writer.Commit();
        CheckpointStore.Prune(directory, Options.KeepCheckpoints);
        _logger.LogInformation("Checkpoint of step {Step} written to {Path}.", Step, path);
        return path;
    }

    /// <summary>Restores the state saved by <see cref="SaveCheckpoint"/> from the checkpoint folder <paramref name="checkpoint"/>.</summary>
    /// <exception cref="InvalidDataException">The checkpoint is incomplete, corrupt, or from an incompatible configuration.</exception>
    public void LoadCheckpoint(string checkpoint)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpoint);
        ThrowIfDisposed();
        CheckpointStore.Verify(checkpoint);
        var info = CheckpointStore.ReadJson<CheckpointInfo>(Path.Combine(checkpoint, CheckpointFiles.Trainer));
        if (!info.ParameterNames.SequenceEqual(_modelParams.Select(p => p.Name)))
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written for a student with other trainable parameters.");
        if (info.EmaRates.Length != _ema.Count || !info.EmaRates.SequenceEqual(Options.EmaRates))
            throw new InvalidDataException($"checkpoint '{checkpoint}' has EMA rates [{string.Join(", ", info.EmaRates)}], this distiller [{string.Join(", ", Options.EmaRates)}].");
        if (info.Precision != Options.Precision.ToString())
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written with precision {info.Precision}, this distiller uses {Options.Precision}.");
        if (info.HasClipper != (GradClipper is not null))
            throw new InvalidDataException($"checkpoint '{checkpoint}' was written {(info.HasClipper ? "with" : "without")} gradient clipping; this distiller is configured {(GradClipper is null ? "without" : "with")}.");

        using (torch.no_grad())
        {
            using (var sd = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.Student)))
                sd.LoadInto(Student.Module);
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
        using (var state = new LoadedTensors(Path.Combine(checkpoint, CheckpointFiles.State)))
        {
            _generator.set_state(state.Get("rng"));
            if (GradClipper is not null)
                GradClipper.Restore(state.Get("clip_norms").data<float>().ToArray(), info.ClipCurrentMaxNorm, info.ClipBufferPosition, info.ClipBufferLength);
        }
        Step = info.Step;
        SkippedSteps = info.SkippedSteps;
        LogLossScale = info.LogLossScale;
        _logger.LogInformation("Resumed from checkpoint {Path} at step {Step}.", checkpoint, Step);
    }

    /// <summary>
    /// Loads the newest checkpoint under <paramref name="directory"/> (the configured folder when null) whose files
    /// match their manifest (sizes and SHA-256); newer corrupt or incomplete ones are skipped with a logged warning.
    /// Returns false if there is none.
    /// </summary>
    /// <exception cref="InvalidDataException">The chosen checkpoint does not fit this distiller or holds malformed values.</exception>
    public bool TryResume(string? directory = null)
    {
        var dir = directory ?? Options.CheckpointDirectory ?? throw new ArgumentException("no checkpoint folder given or configured.", nameof(directory));
        var latest = CheckpointStore.FindLatest(dir, _logger);
        if (latest is null) return false;
        LoadCheckpoint(latest);
        return true;
    }

    private Dictionary<string, Tensor> NamedMasters() => _modelParams.Select((p, i) => (p.Name, (Tensor)_masterParams[i])).ToDictionary(x => x.Name, x => x.Item2);
}
