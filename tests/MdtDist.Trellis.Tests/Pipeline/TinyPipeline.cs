using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>A tiny random TRELLIS (4³ structure latent → 16³ grid) built from TRELLIS-style configs.</summary>
internal static class TinyPipeline
{
    /// <summary>Checkpoint names of the four networks (<c>ss_flow</c>, ...) → <see cref="RandomTinyTrellis"/>'s pipeline.json keys.</summary>
    private static readonly Dictionary<string, string> Keys =
        RandomTinyTrellis.CheckpointNames.Where(kv => RandomTinyTrellis.Configs.ContainsKey(kv.Key)).ToDictionary(kv => kv.Value, kv => kv.Key);

    public static IReadOnlyDictionary<string, string> Configs { get; } = Keys.ToDictionary(kv => kv.Key, kv => RandomTinyTrellis.Configs[kv.Value]);

    public static nn.Module Build(string key, long seed, ScalarType dtype) => RandomTinyTrellis.Build(Keys[key], seed, dtype);

    public static T Randomize<T>(T model, long seed) where T : nn.Module => RandomTinyTrellis.Randomize(model, seed);

    public static TrellisPipeline Create(ScalarType dtype = ScalarType.Float32, long seed = 100) => RandomTinyTrellis.Create(dtype, seed);

    public static Tensor Condition(int batch = 1, long seed = 7, ScalarType dtype = ScalarType.Float32) =>
        torch.randn(new long[] { batch, 6, 16 }, dtype: dtype, generator: new Generator((ulong)seed));

    /// <summary>Writes <paramref name="p"/> as a TRELLIS model folder in a new temporary folder (see <see cref="RandomTinyTrellis.WriteModelFolder"/>).</summary>
    public static string WriteFolder(TrellisPipeline p)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-trellis-").FullName;
        RandomTinyTrellis.WriteModelFolder(p, dir);
        return dir;
    }
}
