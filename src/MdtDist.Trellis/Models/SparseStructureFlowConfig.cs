using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Trellis.Models;

/// <summary>
/// Constructor arguments of TRELLIS's <c>SparseStructureFlowModel</c> (Python keyword names in brackets). Defaults are
/// the Python defaults. The released image model <c>ss_flow_img_dit_L_16l8_fp16</c> is <see cref="ImageLarge"/>.
/// </summary>
public sealed record SparseStructureFlowConfig : TrellisFlowConfig
{
    /// <summary>The TRELLIS class name.</summary>
    public const string ClassName = "SparseStructureFlowModel";

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <summary>Tokens per sample: (R/p)³.</summary>
    internal long Tokens => (Resolution / PatchSize) * (Resolution / PatchSize) * (Resolution / PatchSize);

    /// <summary>The released TRELLIS-image-large stage-1 flow (<c>ckpts/ss_flow_img_dit_L_16l8_fp16.json</c>).</summary>
    public static SparseStructureFlowConfig ImageLarge => new()
    {
        Resolution = 16, InChannels = 8, OutChannels = 8, ModelChannels = 1024, CondChannels = 1024, NumBlocks = 24,
        NumHeads = 16, MlpRatio = 4, PatchSize = 1, PeMode = "ape", QkRmsNorm = true, UseFp16 = true,
    };

    /// <summary>Checks that the network can be built.</summary>
    /// <remarks>
    /// <c>pe_mode = "rope"</c> is rejected: TRELLIS's SparseStructureFlowModel registers no <c>pos_emb</c> in that mode
    /// but adds <c>self.pos_emb</c> unconditionally in <c>forward</c>, so the reference cannot run it, and no released
    /// checkpoint uses it.
    /// </remarks>
    /// <exception cref="ArgumentException">A value is out of range or inconsistent.</exception>
    /// <exception cref="NotSupportedException"><c>pe_mode</c> is "rope".</exception>
    public void Validate()
    {
        var p = ValidateCommon();
        if (p.Range("patch_size", PatchSize, 1, TrellisConfigLimits.MaxPatch) && Resolution >= 1)
            p.Check(Resolution % PatchSize == 0, $"patch_size {PatchSize} must divide resolution {Resolution}");
        p.OneOf("pe_mode", PeMode, "ape", "rope");
        p.ThrowIfAny();
        if (PeMode == "rope")
            throw new NotSupportedException($"{ClassName} with pe_mode 'rope' cannot run in TRELLIS itself (no pos_emb is registered, yet forward adds self.pos_emb), and no released checkpoint uses it; use pe_mode 'ape'.");
    }

    /// <summary>Reads the <c>args</c> object of a checkpoint config.</summary>
    /// <exception cref="ArgumentException">A missing, unknown or mistyped argument (all listed).</exception>
    public static SparseStructureFlowConfig FromArgs(JsonObject? args)
    {
        var a = new ConfigArgs(ClassName, args);
        var cfg = ReadCommon(a, new SparseStructureFlowConfig { Resolution = 0, InChannels = 0, ModelChannels = 0, CondChannels = 0, OutChannels = 0, NumBlocks = 0 });
        a.Finish();
        return cfg;
    }

}
