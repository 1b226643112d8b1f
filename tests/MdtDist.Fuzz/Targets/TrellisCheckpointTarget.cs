using MdtDist.Trellis.Checkpoints;

namespace MdtDist.Fuzz.Targets;

/// <summary><see cref="TrellisCheckpoint.Load"/> on a <c>ckpts/NAME.json</c> + <c>ckpts/NAME.safetensors</c> pair.</summary>
public sealed class TrellisCheckpointTarget : FuzzTarget
{
    /// <inheritdoc />
    public override string Name => "trellis_checkpoint";

    /// <inheritdoc />
    public override string EntryPoint => "TrellisCheckpoint.Load(stem)";

    /// <inheritdoc />
    public override IReadOnlyList<Type> DocumentedExceptions { get; } =
        new[] { typeof(InvalidDataException), typeof(FileNotFoundException), typeof(StateDictMismatchException), typeof(NotSupportedException) };

    /// <inheritdoc />
    protected override IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds()
    {
        var folder = TinyTrellis.ModelFolder(100);
        return new[] { "ss_flow", "slat_flow", "ss_dec" }.Select(key => (IReadOnlyDictionary<string, byte[]>)new Dictionary<string, byte[]>
        {
            ["ckpts/model.json"] = folder[$"ckpts/{key}.json"], ["ckpts/model.safetensors"] = folder[$"ckpts/{key}.safetensors"],
        }).ToArray();
    }

    /// <inheritdoc />
    public override double Weight(string file) => file.EndsWith(".json", StringComparison.Ordinal) ? 3 : 1;

    /// <inheritdoc />
    public override void Read(string folder, FuzzCase c)
    {
        using var model = TrellisCheckpoint.Load(Path.Combine(folder, "ckpts", "model"));
    }
}
