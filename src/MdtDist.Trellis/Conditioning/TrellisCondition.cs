using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// What both TRELLIS flows are conditioned on, as TRELLIS's <c>get_cond</c> returns it: condition tokens and the
/// negative (unconditional) tokens that classifier-free guidance contrasts them with.
/// </summary>
/// <remarks>
/// Given <c>Cond [B or 1, L, C]</c> (a batch-1 condition is repeated to the batch by the flows) and
/// <c>NegCond [1, L, C]</c> (the same tokens for every sample). TRELLIS's image pipeline uses zeros as the negative
/// (<see cref="FromImageFeatures"/>); its text pipeline uses the encoding of the empty prompt. The record does not own
/// its tensors: the caller disposes them (<see cref="FromImageFeatures"/> allocates the zeros, which the caller may dispose
/// through <see cref="NegCond"/>).
/// </remarks>
public sealed record TrellisCondition
{
    /// <summary>Pairs condition tokens with negative tokens.</summary>
    /// <param name="Cond">Condition tokens <c>[B or 1, L, C]</c>.</param>
    /// <param name="NegCond">Negative tokens <c>[1, L, C]</c> on the same device.</param>
    /// <exception cref="ArgumentException">A tensor that is not 3-D, a negative of another shape than <c>[1, L, C]</c>, a device
    /// mismatch, or NaN/infinite values.</exception>
    public TrellisCondition(Tensor Cond, Tensor NegCond)
    {
        ArgumentNullException.ThrowIfNull(Cond);
        ArgumentNullException.ThrowIfNull(NegCond);
        if (Cond.dim() != 3 || Cond.shape[0] < 1 || Cond.shape[1] < 1 || Cond.shape[2] < 1)
            throw new ArgumentException($"Cond must be condition tokens [B, L, C] with B, L, C >= 1, found [{string.Join(", ", Cond.shape)}].", nameof(Cond));
        if (NegCond.dim() != 3 || NegCond.shape[0] != 1 || NegCond.shape[1] != Cond.shape[1] || NegCond.shape[2] != Cond.shape[2])
            throw new ArgumentException($"NegCond must be [1, {Cond.shape[1]}, {Cond.shape[2]}] to match Cond [{string.Join(", ", Cond.shape)}], found [{string.Join(", ", NegCond.shape)}].", nameof(NegCond));
        if (Cond.device_type != NegCond.device_type || Cond.device_index != NegCond.device_index)
            throw new ArgumentException($"Cond is on {Cond.device} but NegCond is on {NegCond.device}.", nameof(NegCond));
        if (!Cond.is_floating_point() || !NegCond.is_floating_point())
            throw new ArgumentException($"condition tokens must be floating point, found Cond {Cond.dtype} and NegCond {NegCond.dtype}.", nameof(Cond));
        CheckFinite(Cond, nameof(Cond));
        CheckFinite(NegCond, nameof(NegCond));
        this.Cond = Cond;
        this.NegCond = NegCond;
    }

    /// <summary>Condition tokens <c>[B or 1, L, C]</c>.</summary>
    public Tensor Cond { get; }

    /// <summary>Negative tokens <c>[1, L, C]</c> (zeros for TRELLIS's image pipeline, the empty prompt's encoding for text).</summary>
    public Tensor NegCond { get; }

    /// <summary>Batch size of <see cref="Cond"/> (1 means "the same condition for every sample").</summary>
    public long BatchSize => Cond.shape[0];

    /// <summary>Token width C.</summary>
    public long Channels => Cond.shape[2];

    /// <summary>
    /// TRELLIS's image convention (<c>TrellisImageTo3DPipeline.get_cond</c>): <c>neg_cond = zeros</c>, here
    /// <c>[1, L, C]</c> in the dtype and on the device of <paramref name="cond"/>.
    /// </summary>
    /// <param name="cond">Layer-normed DINOv2 tokens <c>[B or 1, L, C]</c> (1374 × 1024 for TRELLIS-image-large).</param>
    /// <exception cref="ArgumentException"><paramref name="cond"/> is not <c>[B, L, C]</c> or not finite.</exception>
    public static TrellisCondition FromImageFeatures(Tensor cond)
    {
        ArgumentNullException.ThrowIfNull(cond);
        if (cond.dim() != 3)
            throw new ArgumentException($"cond must be condition tokens [B, L, C], found [{string.Join(", ", cond.shape)}].", nameof(cond));
        return new TrellisCondition(cond, torch.zeros(new[] { 1L, cond.shape[1], cond.shape[2] }, dtype: cond.dtype, device: cond.device));
    }

    /// <summary>
    /// Both token tensors in <paramref name="dtype"/> (this condition when they already are): a sampler run casts once up
    /// front to the flow's dtype, so every step passes the same tensors (the flow's torso cast and the cross-attention K/V
    /// cache recognise a condition by its storage).
    /// </summary>
    internal TrellisCondition As(ScalarType dtype) =>
        Cond.dtype == dtype && NegCond.dtype == dtype ? this : new TrellisCondition(Cond.to(dtype), NegCond.to(dtype));

    /// <summary>The condition of samples <paramref name="indices"/> (this one when <see cref="Cond"/> has batch 1).</summary>
    internal TrellisCondition Select(IReadOnlyList<long> indices)
    {
        if (BatchSize == 1) return this;
        using var idx = torch.tensor(indices.ToArray(), device: Cond.device);
        return new TrellisCondition(Cond.index_select(0, idx), NegCond);
    }

    private static void CheckFinite(Tensor t, string name)
    {
        using var finite = torch.isfinite(t).all();
        if (!finite.item<bool>()) throw new ArgumentException($"{name} contains NaN or infinite values.", name);
    }
}

/// <summary>
/// The "encode condition" stage of a TRELLIS pipeline: turns a user input (an image, a prompt) into a
/// <see cref="TrellisCondition"/>. An image encoder (DINOv2) or a text encoder (CLIP) implements it and
/// <see cref="Pipeline.TrellisPipeline.Run{TInput}"/> calls it first.
/// </summary>
/// <typeparam name="TInput">What the encoder takes.</typeparam>
public interface ITrellisConditioner<in TInput>
{
    /// <summary>Condition and negative tokens for <paramref name="input"/>; the caller disposes the tensors.</summary>
    TrellisCondition Encode(TInput input);
}
