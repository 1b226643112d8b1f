namespace MdtDist.Trellis;

/// <summary>How the TRELLIS networks compute softmax(q·kᵀ/√D)·v.</summary>
public enum AttentionBackend
{
    /// <summary>
    /// <see cref="Sdpa"/> for float16 / bfloat16 / float32 tensors on any device (libtorch's CPU kernel is 3-4× faster
    /// than the explicit math on TRELLIS's 4096-token stage-1 attention), <see cref="Math"/> for float64 (exact runs).
    /// </summary>
    Auto = 0,

    /// <summary>Explicit math: scores = (q·kᵀ)·(1/√D), softmax over keys, then ·v (TRELLIS's "naive" backend, bit-for-bit its op order).</summary>
    Math = 1,

    /// <summary>libtorch's fused <c>scaled_dot_product_attention</c> (flash / memory-efficient kernels where available).</summary>
    Sdpa = 2,
}
