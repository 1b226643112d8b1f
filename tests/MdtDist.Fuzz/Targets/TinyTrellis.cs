using MdtDist.Trellis.Pipeline;
using static TorchSharp.torch;

namespace MdtDist.Fuzz.Targets;

/// <summary>Fuzz seeds from <see cref="RandomTinyTrellis"/>: its model folder, as released checkpoints store it (float16).</summary>
internal static class TinyTrellis
{
    /// <summary>
    /// The files of <see cref="RandomTinyTrellis.WriteModelFolder"/> for the tiny pipeline of weight seed
    /// <paramref name="seed"/>, by path relative to the folder (<c>pipeline.json</c>, <c>ckpts/NAME.json</c>, <c>ckpts/NAME.safetensors</c>).
    /// </summary>
    public static Dictionary<string, byte[]> ModelFolder(long seed)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-fuzz-").FullName;
        try
        {
            var p = RandomTinyTrellis.Create(seed: seed);
            try { RandomTinyTrellis.WriteModelFolder(p, dir, ScalarType.Float16); }
            finally
            {
                p.StructureFlow.Dispose();
                p.StructureDecoder.Dispose();
                p.LatentFlow.Dispose();
                p.GaussianDecoder?.Dispose();
            }
            return Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
                .ToDictionary(f => Path.GetRelativePath(dir, f).Replace('\\', '/'), File.ReadAllBytes);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
