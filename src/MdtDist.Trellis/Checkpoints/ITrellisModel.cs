using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>
/// A TRELLIS network: it can be stored as a TRELLIS checkpoint pair <c>NAME.json</c> (<c>{"name": class, "args": {...}}</c>)
/// + <c>NAME.safetensors</c> (its state dict under TRELLIS's parameter names), and it has the one precision API of the
/// TRELLIS networks: inputs in <see cref="DType"/>, the transformer / residual torso in <see cref="TorsoDType"/>
/// (TRELLIS's <c>convert_to_fp16</c>, generalised by <see cref="SetTorsoDType"/>).
/// </summary>
public interface ITrellisModel
{
    /// <summary>The TRELLIS class name written to <c>"name"</c> (e.g. <c>SparseStructureFlowModel</c>).</summary>
    string TrellisClassName { get; }

    /// <summary>The constructor arguments written to <c>"args"</c> (Python keyword names), enough to rebuild the network.</summary>
    JsonObject ToConfigArgs();

    /// <summary>The dtype of the input / output layers: the dtype inputs are expected in.</summary>
    ScalarType DType { get; }

    /// <summary>The dtype the torso (transformer blocks, residual / IO / subdivision blocks) computes in.</summary>
    ScalarType TorsoDType { get; }

    /// <summary>
    /// Runs the torso in <paramref name="dtype"/> (float16 / bfloat16 as TRELLIS's <c>use_fp16</c>, or back to float32 /
    /// float64): the torso's linear and convolution weights are converted; norms compute in at least float32; the input
    /// and output layers keep <see cref="DType"/>.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not a floating dtype.</exception>
    void SetTorsoDType(ScalarType dtype);
}
