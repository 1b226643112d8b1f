using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Pipeline;

namespace MdtDist.Fuzz.Targets;

/// <summary><see cref="TrellisPipeline.FromFolder"/> on a TRELLIS model folder (<c>pipeline.json</c> + <c>ckpts/</c>).</summary>
public sealed class PipelineFolderTarget : FuzzTarget
{
    /// <inheritdoc />
    public override string Name => "pipeline_folder";

    /// <inheritdoc />
    public override string EntryPoint => "TrellisPipeline.FromFolder(folder)";

    /// <inheritdoc />
    public override IReadOnlyList<Type> DocumentedExceptions { get; } =
        new[] { typeof(InvalidDataException), typeof(FileNotFoundException), typeof(StateDictMismatchException), typeof(NotSupportedException) };

    /// <inheritdoc />
    protected override IReadOnlyList<IReadOnlyDictionary<string, byte[]>> CreateSeeds() => new[] { TinyTrellis.ModelFolder(200) };

    /// <inheritdoc />
    public override double Weight(string file) => file == "pipeline.json" ? 12 : file.EndsWith(".json", StringComparison.Ordinal) ? 1 : 0.5;

    /// <inheritdoc />
    public override void Read(string folder, FuzzCase c)
    {
        var p = TrellisPipeline.FromFolder(folder);
        p.StructureFlow.Dispose();
        p.StructureDecoder.Dispose();
        p.LatentFlow.Dispose();
        p.GaussianDecoder?.Dispose();
    }
}
