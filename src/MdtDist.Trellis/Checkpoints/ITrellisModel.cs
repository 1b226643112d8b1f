using System.Text.Json.Nodes;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>
/// A network that can be stored as a TRELLIS checkpoint pair <c>NAME.json</c> (<c>{"name": class, "args": {...}}</c>)
/// + <c>NAME.safetensors</c> (its state dict under TRELLIS's parameter names).
/// </summary>
public interface ITrellisModel
{
    /// <summary>The TRELLIS class name written to <c>"name"</c> (e.g. <c>SparseStructureFlowModel</c>).</summary>
    string TrellisClassName { get; }

    /// <summary>The constructor arguments written to <c>"args"</c> (Python keyword names), enough to rebuild the network.</summary>
    JsonObject ToConfigArgs();
}
