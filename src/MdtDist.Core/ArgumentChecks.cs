using static TorchSharp.torch;

namespace MdtDist.Core;

/// <summary>
/// The argument checks every flow model, loss and adapter shares, written once so that each precondition has one
/// wording: the argument's name, the expected shape and the shape found.
/// </summary>
internal static class ArgumentChecks
{
    /// <summary>Formats a shape as <c>[a, b, c]</c>.</summary>
    public static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>
    /// Given per-sample times <paramref name="t"/>, requires shape <c>[B]</c> with B = <paramref name="batchSize"/>
    /// (one time per sample of the latent).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is not <c>[B]</c>.</exception>
    public static void PerSampleTime(Tensor t, long batchSize, string argumentName = "t")
    {
        ArgumentNullException.ThrowIfNull(t, argumentName);
        if (t.dim() != 1 || t.shape[0] != batchSize)
            throw new ArgumentException($"{argumentName}: expected one time per sample, shape [B] = [{batchSize}], found {Shape(t.shape)}.", argumentName);
    }

    /// <summary>
    /// Given condition tokens for a batch of <paramref name="batchSize"/>, requires <c>[B or 1, L, width]</c> (a batch-1
    /// condition is shared by every sample) and returns it repeated to <c>[B, L, width]</c> when it has batch 1.
    /// </summary>
    /// <param name="condition">The tokens; null is an error (the model is conditional).</param>
    /// <param name="batchSize">B.</param>
    /// <param name="width">The model's condition channels.</param>
    /// <param name="model">The model's name for the message.</param>
    /// <param name="argumentName">The argument's name for the message.</param>
    /// <exception cref="ArgumentException">A missing condition, or one of another shape.</exception>
    public static Tensor Condition(Tensor? condition, long batchSize, long width, string model, string argumentName = "condition")
    {
        if (condition is null)
            throw new ArgumentException($"{argumentName}: {model} is conditional and needs condition tokens [B or 1, L, {width}], got null.", argumentName);
        if (condition.dim() != 3 || (condition.shape[0] != batchSize && condition.shape[0] != 1))
            throw new ArgumentException($"{argumentName}: expected shape [{batchSize} or 1, L, {width}], found {Shape(condition.shape)}.", argumentName);
        if (condition.shape[2] != width)
            throw new ArgumentException($"{argumentName}: expected shape [{batchSize} or 1, L, {width}], found {Shape(condition.shape)}: the tokens have width {condition.shape[2]}, but {model}'s cond_channels is {width}.", argumentName);
        return condition.shape[0] == batchSize ? condition : condition.expand(batchSize, -1, -1);
    }
}
