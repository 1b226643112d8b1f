using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// Loads DINOv2 weights as users have them: the torch.hub checkpoint (<c>dinov2_vitl14_reg4_pretrain.pth</c>, a pickled
/// state dict, read by <see cref="PyTorchCheckpoint"/>) or a <c>.safetensors</c> file with the same names. Loading is
/// strict: every missing, unexpected and mis-shaped tensor is reported at once (<see cref="StateDictMismatchException"/>).
/// </summary>
public static class Dinov2Checkpoint
{
    /// <summary>
    /// Where <see cref="DefaultPath"/> looks: <c>$MDTDIST_DINOV2</c> if set, else torch.hub's own cache
    /// (<c>$TORCH_HOME/hub/checkpoints/</c>, <c>~/.cache/torch/hub/checkpoints/</c>) and finally <c>MODEL_FOLDER/dinov2_vitl14_reg4_pretrain.pth</c>.
    /// </summary>
    /// <param name="modelFolder">A TRELLIS model folder (optional) whose own copy is checked last.</param>
    /// <returns>The candidate paths in search order.</returns>
    public static IReadOnlyList<string> SearchPaths(string? modelFolder = null)
    {
        var list = new List<string>();
        if (Environment.GetEnvironmentVariable("MDTDIST_DINOV2") is { Length: > 0 } env) list.Add(env);
        var torchHome = Environment.GetEnvironmentVariable("TORCH_HOME") is { Length: > 0 } th
            ? th
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "torch");
        list.Add(Path.Combine(torchHome, "hub", "checkpoints", Dinov2Config.VitL14RegCheckpointFile));
        if (modelFolder is not null) list.Add(Path.Combine(modelFolder, Dinov2Config.VitL14RegCheckpointFile));
        return list;
    }

    /// <summary>The first existing file of <see cref="SearchPaths"/>.</summary>
    /// <exception cref="FileNotFoundException">None exists; the message lists the places searched and how to get the file.</exception>
    public static string DefaultPath(string? modelFolder = null)
    {
        var paths = SearchPaths(modelFolder);
        foreach (var p in paths) if (File.Exists(p)) return p;
        throw new FileNotFoundException(
            $"DINOv2 checkpoint {Dinov2Config.VitL14RegCheckpointFile} not found; looked in: {string.Join(", ", paths)}. " +
            "Download it once (torch.hub does, or fetch it from the DINOv2 release page) and pass its path, or set MDTDIST_DINOV2.");
    }

    /// <summary>Reads the tensors of a <c>.pth</c>/<c>.pt</c> (torch.save) or <c>.safetensors</c> file (CPU, stored dtypes).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">Unreadable file (the message names it and the problem).</exception>
    public static Dictionary<string, Tensor> ReadStateDict(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"DINOv2 checkpoint '{path}' does not exist.", path);
        return path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? SafeTensors.Load(path) : PyTorchCheckpoint.LoadStateDict(path);
    }

    /// <summary>
    /// The architecture a DINOv2 state dict describes: width from <c>cls_token</c>, depth from the <c>blocks.N</c>
    /// count, native grid from <c>pos_embed</c>, registers from <c>register_tokens</c>, MLP ratio from <c>fc1</c>; the head
    /// count is not stored and follows the hub models' head width of 64 unless <paramref name="numHeads"/> is given.
    /// </summary>
    /// <exception cref="InvalidDataException">A tensor the inference needs is missing or has an unexpected rank.</exception>
    public static Dinov2Config InferConfig(IReadOnlyDictionary<string, Tensor> stateDict, long? numHeads = null, string source = "the state dict")
    {
        Tensor Need(string name) => stateDict.TryGetValue(name, out var t) ? t
            : throw new InvalidDataException($"{source} has no tensor '{name}', so it is not a DINOv2 state dict in the torch.hub layout.");
        var cls = Need("cls_token");
        var pos = Need("pos_embed");
        var patch = Need("patch_embed.proj.weight");
        var fc1 = Need("blocks.0.mlp.fc1.weight");
        if (cls.dim() != 3 || pos.dim() != 3 || patch.dim() != 4 || fc1.dim() != 2)
            throw new InvalidDataException($"{source}: cls_token, pos_embed, patch_embed.proj.weight or blocks.0.mlp.fc1.weight has an unexpected rank.");
        long e = cls.shape[2];
        long regs = stateDict.TryGetValue("register_tokens", out var r) ? r.shape[1] : 0;
        long depth = 0;
        while (stateDict.ContainsKey($"blocks.{depth}.norm1.weight")) depth++;
        long m = (long)Math.Round(Math.Sqrt(pos.shape[1] - 1));
        if (m * m != pos.shape[1] - 1) throw new InvalidDataException($"{source}: pos_embed has {pos.shape[1] - 1} patch rows, not a square grid.");
        long p = patch.shape[2];
        long heads = numHeads ?? (e % 64 == 0 ? e / 64 : throw new InvalidDataException($"{source}: width {e} is not a multiple of 64; pass the head count."));
        return new Dinov2Config(e, depth, heads, m * p, p, regs, (double)fc1.shape[0] / e);
    }

    /// <summary>
    /// Builds a <see cref="Dinov2Model"/> and loads <paramref name="path"/> into it strictly.
    /// </summary>
    /// <param name="path">The torch.hub <c>.pth</c> or a <c>.safetensors</c> file.</param>
    /// <param name="config">The architecture (null: <see cref="InferConfig"/>).</param>
    /// <param name="dtype">Parameter dtype (float32 by default).</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <exception cref="StateDictMismatchException">The weights do not fit the architecture.</exception>
    public static Dinov2Model Load(string path, Dinov2Config? config = null, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var sd = ReadStateDict(path);
        try
        {
            var model = new Dinov2Model(config ?? InferConfig(sd, source: $"'{path}'"), dtype, device);
            try
            {
                TrellisCheckpoint.LoadStateDict(model, sd, strict: true, source: $"'{path}'");
            }
            catch
            {
                model.Dispose();
                throw;
            }
            model.eval();
            return model;
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }
}
