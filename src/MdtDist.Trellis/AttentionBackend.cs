namespace MdtDist.Trellis;

/// <summary>How the TRELLIS networks compute softmax(q·kᵀ/√D)·v.</summary>
public enum AttentionBackend
{
    /// <summary>
    /// <see cref="Sdpa"/> for float16 / bfloat16 / float32 tensors on CUDA, <see cref="Math"/> otherwise
    /// (in particular always <see cref="Math"/> for float64, so float64 runs are exact).
    /// </summary>
    Auto = 0,

    /// <summary>Explicit math: scores = (q·kᵀ)·(1/√D), softmax over keys, then ·v (TRELLIS's "naive" backend, bit-for-bit its op order).</summary>
    Math = 1,

    /// <summary>libtorch's fused <c>scaled_dot_product_attention</c> (flash / memory-efficient kernels where available).</summary>
    Sdpa = 2,
}
