using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// The K/V projection <c>to_kv(context)</c> of a cross-attention layer (or, for a flow, the cast of its condition to the
/// torso's dtype: <see cref="Cast"/>), computed once per condition tensor and reused while the same condition comes back
/// (every step of a sampler run). Identity of the condition: the same storage
/// (data pointer and offset, kept alive by an alias the cache holds, so the address cannot be reused by another
/// tensor), shape, strides, dtype and device, and the same <c>to_kv</c> weight storage and dtype; a different one replaces the entry (the old tensors are disposed).
/// Only under <c>torch.no_grad()</c>, and either inside a <see cref="KvCacheSession"/> (a sampler run, during which no
/// weight changes: the pipeline opens one per stage, so it acts in training mode too, e.g. the distillation snapshots)
/// or in eval mode (<c>model.eval()</c>). Outside a session in training mode (where an optimizer or a finite-difference
/// check changes weights in place, and gradient checkpointing runs no_grad forwards) or with autograd on, the projection
/// is always recomputed and the cache is left alone. The session is part of the key, so an entry never outlives its
/// session's guarantee, and the session's end frees the entries it made. Not detected in eval mode outside a session: a
/// condition modified in place, or <c>to_kv</c>'s weights changed in place, while the same condition is reused (call
/// <see cref="Clear"/> then). Thread-safe.
/// </summary>
internal sealed class CrossAttentionKvCache : IDisposable
{
    private readonly object _lock = new();
    private Tensor? _context;   // alias of the keyed condition: keeps its storage alive
    private Key _key;
    private Tensor? _kv;

    /// <summary>Number of projections served from the cache (for tests).</summary>
    internal long Hits { get; private set; }

    /// <summary>Number of projections computed under no_grad and stored (for tests).</summary>
    internal long Misses { get; private set; }

    /// <summary>The cached projection, or null (for tests).</summary>
    internal Tensor? Cached => _kv;

    /// <summary><c>toKv(context)</c>, from the cache when <paramref name="context"/> is the cached condition, the layer is not
    /// <paramref name="training"/> and autograd is off.
    /// The returned tensor belongs to the cache when cached: the caller must not dispose or modify it.</summary>
    public Tensor Project(Linear toKv, Tensor context, bool training) =>
        Memo(context, toKv.weight!, toKv.weight!.dtype, c => toKv.forward(c), training);

    /// <summary>
    /// <paramref name="condition"/> cast to <paramref name="dtype"/>, under the same rules as <see cref="Project"/>: a flow
    /// whose torso computes in another dtype than the condition it is given (a float32 condition, bfloat16 blocks) casts
    /// it once per condition, so the very same tensor reaches its cross-attention layers on every step and their K/V
    /// caches hit. The returned tensor belongs to the cache when cached (the condition itself when no cast is needed).
    /// </summary>
    public Tensor Cast(Tensor condition, ScalarType dtype, bool training) =>
        condition.dtype == dtype ? condition : Memo(condition, null, dtype, c => c.to(dtype), training);

    private Tensor Memo(Tensor source, Tensor? weight, ScalarType resultDType, Func<Tensor, Tensor> compute, bool training)
    {
        var session = KvCacheSession.Current;
        if ((training && session is null) || torch.is_grad_enabled()) return compute(source);
        var key = Key.Of(source, weight, resultDType, session?.Id ?? 0);
        lock (_lock)
        {
            if (_kv is not null && _key.Equals(key))
            {
                Hits++;
                return _kv;
            }
            Tensor result, alias;
            using (var scope = torch.NewDisposeScope())
            {
                result = compute(source).DetachFromDisposeScope();
                alias = source.detach().DetachFromDisposeScope();
            }
            ClearLocked();
            (_kv, _context, _key) = (result, alias, key);
            Misses++;
            session?.Register(this);
            return result;
        }
    }

    /// <summary>Drops the cached projection and the condition alias.</summary>
    public void Clear()
    {
        lock (_lock) ClearLocked();
    }

    /// <summary>Drops the entry when it was made in session <paramref name="session"/> (that session has ended).</summary>
    internal void ClearIf(long session)
    {
        lock (_lock) if (_kv is not null && _key.Session == session) ClearLocked();
    }

    /// <inheritdoc />
    public void Dispose() => Clear();

    private void ClearLocked()
    {
        _kv?.Dispose();
        _context?.Dispose();
        _kv = null;
        _context = null;
        _key = default;
    }

    // The weight's storage (none for a cast) and the result's dtype are part of the key, so a precision change or a
    // replaced parameter misses.
    private readonly record struct Key(IntPtr Data, long Offset, string Shape, ScalarType DType, DeviceType DeviceType, int DeviceIndex, IntPtr Weight, ScalarType ResultDType, long Session)
    {
        public static Key Of(Tensor t, Tensor? weight, ScalarType resultDType, long session) => new(
            THSStorage_data_ptr(t.Handle), t.storage_offset(),
            string.Join(",", t.shape) + "/" + string.Join(",", t.stride()),
            t.dtype, t.device_type, t.device_index, weight is null ? IntPtr.Zero : THSStorage_data_ptr(weight.Handle), resultDType, session);
    }

    // TorchSharp's own native library (already loaded by TorchSharp); TorchSharp keeps this entry point protected.
    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSStorage_data_ptr(IntPtr tensor);
}

/// <summary>
/// A stretch of work during which no network weight changes (one sampler run): inside it the cross-attention layers
/// project a condition's keys and values once and reuse them on every later call with the same condition, in training
/// mode too (<see cref="CrossAttentionKvCache"/>). Ends (and frees the projections it cached) on <see cref="Dispose"/>.
/// Flows with the async context (<see cref="AsyncLocal{T}"/>); sessions nest, the inner one applying until it ends.
/// </summary>
internal sealed class KvCacheSession : IDisposable
{
    private static readonly AsyncLocal<KvCacheSession?> Active = new();
    private static long _lastId;
    private readonly KvCacheSession? _outer;
    private readonly HashSet<CrossAttentionKvCache> _caches = new(ReferenceEqualityComparer.Instance);
    private bool _ended;

    private KvCacheSession(KvCacheSession? outer)
    {
        _outer = outer;
        Id = Interlocked.Increment(ref _lastId);
    }

    /// <summary>The session of the current async context, or null.</summary>
    public static KvCacheSession? Current => Active.Value;

    /// <summary>Unique, > 0 (0 in a cache key means no session).</summary>
    public long Id { get; }

    /// <summary>Starts a session in the current async context.</summary>
    public static KvCacheSession Begin()
    {
        var session = new KvCacheSession(Active.Value);
        Active.Value = session;
        return session;
    }

    /// <summary>A cache that stored an entry keyed on this session (cleared when the session ends).</summary>
    internal void Register(CrossAttentionKvCache cache)
    {
        lock (_caches) if (!_ended) _caches.Add(cache);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        CrossAttentionKvCache[] caches;
        lock (_caches)
        {
            if (_ended) return;
            _ended = true;
            caches = _caches.ToArray();
            _caches.Clear();
        }
        if (ReferenceEquals(Active.Value, this)) Active.Value = _outer;
        foreach (var c in caches) c.ClearIf(Id);
    }
}
