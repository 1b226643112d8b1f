using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using MdtDist.Core.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Distributed;

/// <summary>
/// <see cref="ITrainingCommunicator"/> over MPI through MPI.NET, on MPICH. MPI.NET P/Invokes Microsoft MPI
/// (<c>msmpi.dll</c>); MS-MPI keeps MPICH's ABI (integer handles), so on Linux the binding is pointed at MPICH's
/// <c>libmpich.so.12</c> (Debian: <c>apt-get install mpich libmpich-dev</c>). Open MPI's ABI differs (handles are
/// pointers) and does not work with MPI.NET. Launch the program with <c>mpiexec.mpich -n N dotnet app.dll</c>.
/// <para>
/// Every collective runs under a watchdog: when one does not complete within <see cref="CollectiveTimeout"/>
/// (a peer rank died or hangs), the process prints which collective on which rank timed out and aborts the whole
/// MPI job (<c>MPI_Abort</c>), so no rank hangs silently. A rank that dies outright makes MPICH's process manager
/// end the others.
/// </para>
/// <para>Tensors must live in host memory (MPICH is not CUDA-aware); a GPU backend implements <see cref="ITrainingCommunicator"/> on device buffers.</para>
/// </summary>
public sealed class MpiCommunicator : ITrainingCommunicator, IDisposable
{
    /// <summary>The native library MPI.NET's calls are redirected to (Debian 12's MPICH).</summary>
    public const string DefaultLibrary = "libmpich.so.12";

    private static readonly object Gate = new();
    private static string? _resolvedLibrary;
    private static MPI.Environment? _environment;
    private static MpiCommunicator? _instance;
    private readonly Watchdog _watchdog;
    private bool _disposed;

    private MpiCommunicator(TimeSpan timeout)
    {
        var world = MPI.Communicator.world;
        Rank = world.Rank;
        WorldSize = world.Size;
        CollectiveTimeout = timeout;
        _watchdog = new Watchdog(this);
    }

    /// <inheritdoc />
    public int Rank { get; }

    /// <inheritdoc />
    public int WorldSize { get; }

    /// <summary>The longest a collective may take before the job is aborted.</summary>
    public TimeSpan CollectiveTimeout { get; }

    /// <summary>
    /// Initialises MPI (once per process) and returns the world communicator, or null with the reason in
    /// <paramref name="unavailableReason"/> when MPI cannot be used (MPICH not installed, not loadable).
    /// </summary>
    /// <param name="collectiveTimeout">Watchdog bound of every collective (default 5 minutes).</param>
    /// <param name="library">The MPICH library to load (default <see cref="DefaultLibrary"/>; env <c>MDTDIST_MPI_LIBRARY</c> overrides).</param>
    /// <param name="unavailableReason">Why distributed mode is unavailable, or null.</param>
    public static MpiCommunicator? TryInitialize(out string? unavailableReason, TimeSpan? collectiveTimeout = null, string? library = null)
    {
        lock (Gate)
        {
            if (_instance is not null) { unavailableReason = null; return _instance; }
            library ??= System.Environment.GetEnvironmentVariable("MDTDIST_MPI_LIBRARY") is { Length: > 0 } env ? env : DefaultLibrary;
            unavailableReason = Probe(library);
            if (unavailableReason is not null) return null;
            InstallResolver(library);
            var args = System.Environment.GetCommandLineArgs();
            _environment = new MPI.Environment(ref args, MPI.Threading.Multiple);
            _instance = new MpiCommunicator(collectiveTimeout ?? TimeSpan.FromMinutes(5));
            return _instance;
        }
    }

    /// <summary>Like <see cref="TryInitialize"/>, but throws when MPI is unavailable.</summary>
    /// <exception cref="InvalidOperationException">MPI cannot be used; the message says why and what to install.</exception>
    public static MpiCommunicator Initialize(TimeSpan? collectiveTimeout = null, string? library = null) =>
        TryInitialize(out var reason, collectiveTimeout, library) ?? throw new InvalidOperationException(reason);

    /// <summary>Null when <paramref name="library"/> can be loaded and exports MPI; otherwise why not, and what to install.</summary>
    internal static string? Probe(string library)
    {
        if (!NativeLibrary.TryLoad(library, out var handle))
            return $"distributed training is unavailable: the MPI library '{library}' could not be loaded. Install MPICH " +
                   "(Debian/Ubuntu: apt-get install mpich libmpich-dev) and launch with mpiexec.mpich, or set MDTDIST_MPI_LIBRARY " +
                   "to an MPICH-ABI library (Open MPI is not ABI-compatible with MPI.NET). Single-process training is unaffected.";
        bool ok = NativeLibrary.TryGetExport(handle, "MPI_Allreduce", out _);
        return ok ? null : $"distributed training is unavailable: '{library}' does not export MPI_Allreduce (not an MPI library).";
    }

    private static void InstallResolver(string library)
    {
        if (_resolvedLibrary is not null) return;
        _resolvedLibrary = library;
        NativeLibrary.SetDllImportResolver(typeof(MPI.Communicator).Assembly, (name, assembly, path) =>
            name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase) ? NativeLibrary.Load(_resolvedLibrary) : IntPtr.Zero);
    }

    /// <inheritdoc />
    public void AllReduceSum(Tensor buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        CheckHost(buffer);
        if (buffer.dtype is ScalarType.Float16 or ScalarType.BFloat16)
        {
            // MPI has no standard 16-bit float type: sum in float32 and round once (for 2 ranks this equals a float16 sum).
            using var wide = buffer.to(ScalarType.Float32);
            AllReduceSum(wide);
            buffer.copy_(wide);
            return;
        }
        int datatype = buffer.dtype switch
        {
            ScalarType.Float32 => MPI.Unsafe.MPI_FLOAT,
            ScalarType.Float64 => MPI.Unsafe.MPI_DOUBLE,
            _ => throw new ArgumentException($"all-reduce supports floating tensors, got {buffer.dtype}.", nameof(buffer)),
        };
        if (buffer.numel() > int.MaxValue) throw new ArgumentException($"a bucket of {buffer.numel()} elements exceeds MPI's int count; use smaller buckets.", nameof(buffer));
        using var recv = torch.empty_like(buffer);
        Run("MPI_Allreduce", () => Check(MPI.Unsafe.MPI_Allreduce(Pointer(buffer), Pointer(recv), (int)buffer.numel(), datatype, MPI.Unsafe.MPI_SUM, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Allreduce"));
        buffer.copy_(recv);
    }

    /// <inheritdoc />
    public unsafe void AllReduceSum(double[] values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var recv = new double[values.Length];
        Run("MPI_Allreduce", () =>
        {
            fixed (double* s = values)
            fixed (double* r = recv)
                Check(MPI.Unsafe.MPI_Allreduce((IntPtr)s, (IntPtr)r, values.Length, MPI.Unsafe.MPI_DOUBLE, MPI.Unsafe.MPI_SUM, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Allreduce");
        });
        Array.Copy(recv, values, values.Length);
    }

    /// <inheritdoc />
    public void Broadcast(Tensor buffer, int root = 0)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        CheckHost(buffer);
        if (!buffer.is_contiguous()) throw new ArgumentException("broadcast needs a contiguous tensor.", nameof(buffer));
        long bytes = buffer.numel() * buffer.ElementSize;
        if (bytes > int.MaxValue) throw new ArgumentException($"a broadcast of {bytes} bytes exceeds MPI's int count.", nameof(buffer));
        Run("MPI_Bcast", () => Check(MPI.Unsafe.MPI_Bcast(Pointer(buffer), (int)bytes, MPI.Unsafe.MPI_BYTE, root, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Bcast"));
    }

    /// <inheritdoc />
    public unsafe byte[] Broadcast(byte[]? bytes, int root = 0)
    {
        var length = new double[] { Rank == root ? (bytes ?? throw new ArgumentNullException(nameof(bytes))).Length : 0 };
        Run("MPI_Bcast", () =>
        {
            fixed (double* p = length)
                Check(MPI.Unsafe.MPI_Bcast((IntPtr)p, 1, MPI.Unsafe.MPI_DOUBLE, root, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Bcast");
        });
        var data = Rank == root ? bytes! : new byte[(int)length[0]];
        if (data.Length == 0) return data;
        Run("MPI_Bcast", () =>
        {
            fixed (byte* p = data)
                Check(MPI.Unsafe.MPI_Bcast((IntPtr)p, data.Length, MPI.Unsafe.MPI_BYTE, root, MPI.Unsafe.MPI_COMM_WORLD), "MPI_Bcast");
        });
        return data;
    }

    /// <inheritdoc />
    public void Barrier() => Run("MPI_Barrier", () => MPI.Communicator.world.Barrier());

    /// <summary>Ends the whole MPI job with <paramref name="exitCode"/> (all ranks), after printing <paramref name="message"/> to stderr.</summary>
    public void Abort(string message, int exitCode = 3)
    {
        Console.Error.WriteLine($"[rank {Rank}/{WorldSize}] {message}");
        Console.Error.Flush();
        MPI.Unsafe.MPI_Abort(MPI.Unsafe.MPI_COMM_WORLD, exitCode);
        System.Environment.Exit(exitCode);
    }

    private static void CheckHost(Tensor t)
    {
        if (t.device_type != DeviceType.CPU)
            throw new ArgumentException($"MpiCommunicator works on host tensors; got one on {t.device}. MPICH here is not CUDA-aware.", nameof(t));
        if (!t.is_contiguous()) throw new ArgumentException("the tensor must be contiguous.", nameof(t));
    }

    /// <summary>The address of a CPU tensor's data (native memory: it does not move).</summary>
    private static unsafe IntPtr Pointer(Tensor t)
    {
        var span = t.bytes;
        if (span.Length == 0) return IntPtr.Zero;
        fixed (byte* p = span) return (IntPtr)p;
    }

    private static void Check(int rc, string call)
    {
        if (rc != 0) throw new InvalidOperationException($"{call} failed with MPI error code {rc}.");
    }

    private void Run(string what, Action call)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _watchdog.Enter(what);
        try { call(); }
        finally { _watchdog.Exit(); }
    }

    /// <summary>Finalises MPI (call once, at the end of the program, on every rank).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _watchdog.Dispose();
        lock (Gate)
        {
            _environment?.Dispose();
            _environment = null;
        }
    }

    /// <summary>Aborts the job when a collective outlives the timeout.</summary>
    private sealed class Watchdog : IDisposable
    {
        private readonly MpiCommunicator _owner;
        private readonly Thread _thread;
        private readonly CancellationTokenSource _stop = new();
        private long _deadlineTicks = long.MaxValue;
        private string _what = "";

        public Watchdog(MpiCommunicator owner)
        {
            _owner = owner;
            _thread = new Thread(Loop) { IsBackground = true, Name = "mpi-watchdog" };
            _thread.Start();
        }

        public void Enter(string what)
        {
            _what = what;
            Interlocked.Exchange(ref _deadlineTicks, Stopwatch.GetTimestamp() + (long)(_owner.CollectiveTimeout.TotalSeconds * Stopwatch.Frequency));
        }

        public void Exit() => Interlocked.Exchange(ref _deadlineTicks, long.MaxValue);

        private void Loop()
        {
            while (!_stop.IsCancellationRequested)
            {
                if (_stop.Token.WaitHandle.WaitOne(200)) return;
                if (Stopwatch.GetTimestamp() > Interlocked.Read(ref _deadlineTicks))
                    _owner.Abort($"{_what} did not complete within {_owner.CollectiveTimeout.TotalSeconds:F0} s: a peer rank died or hangs. Aborting the MPI job.", 3);
            }
        }

        public void Dispose() => _stop.Cancel();
    }
}
