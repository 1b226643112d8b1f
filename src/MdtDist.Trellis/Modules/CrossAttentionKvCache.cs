using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// The K/V projection <c>to_kv(context)</c> of a cross-attention layer, computed once per condition tensor and reused
/// while the same condition comes back (every step of a sampler run). Identity of the condition: the same storage
/// (data pointer and offset, kept alive by an alias the cache holds, so the address cannot be reused by another
/// tensor), shape, strides, dtype and device, and the same <c>to_kv</c> weight storage and dtype; a different one replaces the entry (the old tensors are disposed).
/// Only in eval mode (<c>model.eval()</c>) under <c>torch.no_grad()</c>: in training mode (where an optimizer or a
/// finite-difference check changes weights in place, and gradient checkpointing runs no_grad forwards) or with autograd
/// on, the projection is always recomputed and the cache is left alone. Not detected: a condition modified in place, or <c>to_kv</c>'s weights changed in place,
/// while the same condition is reused (call <see cref="Clear"/> then). Thread-safe.
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
    public Tensor Project(Linear toKv, Tensor context, bool training)
    {
        if (training || torch.is_grad_enabled()) return toKv.forward(context);
        var key = Key.Of(context, toKv.weight!);
        lock (_lock)
        {
            if (_kv is not null && _key.Equals(key))
            {
                Hits++;
                return _kv;
            }
            Tensor kv, alias;
            using (var scope = torch.NewDisposeScope())
            {
                kv = toKv.forward(context).DetachFromDisposeScope();
                alias = context.detach().DetachFromDisposeScope();
            }
            ClearLocked();
            (_kv, _context, _key) = (kv, alias, key);
            Misses++;
            return kv;
        }
    }

    /// <summary>Drops the cached projection and the condition alias.</summary>
    public void Clear()
    {
        lock (_lock) ClearLocked();
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

    // The weight's storage and dtype are part of the key, so a precision change or a replaced parameter misses.
    private readonly record struct Key(IntPtr Data, long Offset, string Shape, ScalarType DType, DeviceType DeviceType, int DeviceIndex, IntPtr Weight, ScalarType WeightDType)
    {
        public static Key Of(Tensor t, Tensor weight) => new(
            THSStorage_data_ptr(t.Handle), t.storage_offset(),
            string.Join(",", t.shape) + "/" + string.Join(",", t.stride()),
            t.dtype, t.device_type, t.device_index, THSStorage_data_ptr(weight.Handle), weight.dtype);
    }

    // TorchSharp's own native library (already loaded by TorchSharp); TorchSharp keeps this entry point protected.
    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSStorage_data_ptr(IntPtr tensor);
}
