using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// TRELLIS-text's condition model: prompts → CLIP tokens (<see cref="ClipTokenizer"/>) → <c>last_hidden_state</c>
/// <c>[B, 77, width]</c> of <see cref="ClipTextModel"/>, every position (padding included) fed to the flows. The
/// negative condition is the encoding of the empty prompt (TRELLIS-text's <c>null_cond</c>), not zeros.
/// </summary>
public sealed class ClipTextConditioner : ITrellisConditioner<IReadOnlyList<string>>, IDisposable
{
    /// <summary>The text condition model TRELLIS-text's <c>pipeline.json</c> names (<c>text_cond_model</c>).</summary>
    public const string TrellisTextModel = "openai/clip-vit-large-patch14";

    private Tensor? _null;

    /// <summary>Pairs a tokenizer with a text model (the conditioner owns the model from then on).</summary>
    /// <exception cref="ArgumentException">The tokenizer's context is longer than the model's positions, or its ids exceed the vocabulary.</exception>
    public ClipTextConditioner(ClipTokenizer tokenizer, ClipTextModel model)
    {
        Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Model = model ?? throw new ArgumentNullException(nameof(model));
        if (tokenizer.ContextLength > model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"the tokenizer makes {tokenizer.ContextLength} positions, the text model has {model.Config.MaxPositionEmbeddings}.", nameof(tokenizer));
        if (Math.Max(tokenizer.StartId, tokenizer.EndId) >= model.Config.VocabSize)
            throw new ArgumentException($"the tokenizer's special ids ({tokenizer.StartId}, {tokenizer.EndId}) lie outside the text model's vocabulary of {model.Config.VocabSize}.", nameof(tokenizer));
    }

    /// <summary>The tokenizer.</summary>
    public ClipTokenizer Tokenizer { get; }

    /// <summary>The text encoder.</summary>
    public ClipTextModel Model { get; }

    /// <summary>Width of the condition tokens (768 for openai/clip-vit-large-patch14).</summary>
    public long Channels => Model.Config.HiddenSize;

    /// <summary>
    /// Loads a CLIP model folder as transformers saves it (e.g. a local copy of openai/clip-vit-large-patch14):
    /// <c>vocab.json</c> + <c>merges.txt</c> (or in <c>tokenizer/</c>) and <c>config.json</c> + <c>model.safetensors</c>
    /// (or in <c>text_encoder/</c>).
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing; the message names it.</exception>
    /// <exception cref="InvalidDataException">A malformed file; the message names it.</exception>
    public static ClipTextConditioner FromFolder(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var tokenizer = ClipTokenizer.FromFolder(folder);
        var model = ClipTextModel.FromFolder(folder, dtype, device);
        return new ClipTextConditioner(tokenizer, model);
    }

    /// <summary>Encodes prompts to condition tokens <c>[B, 77, width]</c> (inference, no gradient).</summary>
    /// <exception cref="ArgumentException">No prompt, or a null prompt.</exception>
    public Tensor EncodeTokens(IReadOnlyList<string> prompts)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        using var noGrad = torch.no_grad();
        using var ids = Tokenizer.EncodeBatch(prompts);
        return Model.forward(ids);
    }

    /// <summary>
    /// TRELLIS-text's <c>get_cond</c>: the prompts' tokens <c>[B, 77, width]</c> and, as the negative, the empty prompt's
    /// encoding <see cref="NullCondition"/> (a copy the caller owns with the condition).
    /// </summary>
    public TrellisCondition Encode(IReadOnlyList<string> input) => new(EncodeTokens(input), NullCondition.clone());

    /// <summary>
    /// Where the text model <paramref name="name"/> (a Hugging Face repository id such as
    /// <c>openai/clip-vit-large-patch14</c>) lives on this machine, tried in order: <c>$MDTDIST_CLIP</c>; inside the
    /// pipeline folder (<c>&lt;folder&gt;/&lt;owner&gt;/&lt;repo&gt;</c>); beside it (<c>&lt;parent&gt;/&lt;repo&gt;</c>, the
    /// layout TRELLIS-text's cross-repository decoder references use); the Hugging Face cache
    /// (<c>$HF_HOME</c> or <c>~/.cache/huggingface</c>, <c>hub/models--owner--repo/snapshots/*</c>). A folder counts when it
    /// holds <c>config.json</c> (or <c>text_encoder/config.json</c>).
    /// </summary>
    /// <exception cref="FileNotFoundException">None of the places holds the model; the message lists them.</exception>
    public static string Locate(string name, string? pipelineFolder = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var tried = new List<string>();
        if (Environment.GetEnvironmentVariable("MDTDIST_CLIP") is { Length: > 0 } env) tried.Add(env);
        if (Directory.Exists(name)) tried.Add(name);
        var parts = name.Split('/');
        if (pipelineFolder is not null)
        {
            tried.Add(Path.Combine(pipelineFolder, Path.Combine(parts)));
            var parent = Path.GetDirectoryName(Path.GetFullPath(pipelineFolder).TrimEnd(Path.DirectorySeparatorChar));
            if (parent is not null) tried.Add(Path.Combine(parent, parts[^1]));
        }
        var hfHome = Environment.GetEnvironmentVariable("HF_HOME") is { Length: > 0 } h ? h
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface");
        var snapshots = Path.Combine(hfHome, "hub", "models--" + string.Join("--", parts), "snapshots");
        if (Directory.Exists(snapshots)) tried.AddRange(Directory.GetDirectories(snapshots).OrderBy(d => d, StringComparer.Ordinal));
        else tried.Add(snapshots);
        foreach (var dir in tried)
            if (File.Exists(Path.Combine(dir, "config.json")) || File.Exists(Path.Combine(dir, "text_encoder", "config.json")))
                return dir;
        throw new FileNotFoundException(
            $"the text model '{name}' was not found; tried: {string.Join(", ", tried.Select(t => $"'{t}'"))}. Download it (config.json, model.safetensors, " +
            "vocab.json, merges.txt) into one of these folders or set MDTDIST_CLIP to its folder.", name);
    }

    /// <summary>
    /// The text condition model of a TRELLIS-text model folder: <c>pipeline.json</c>'s <c>text_cond_model</c> located by
    /// <see cref="Locate"/> and loaded by <see cref="FromFolder"/>.
    /// </summary>
    /// <exception cref="FileNotFoundException">pipeline.json or the text model is missing.</exception>
    /// <exception cref="InvalidDataException">pipeline.json has no string <c>text_cond_model</c>.</exception>
    public static ClipTextConditioner FromPipelineFolder(string pipelineFolder, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var name = TrellisPipelineConfig.ReadFolder(pipelineFolder, requireModels: false).TextConditionModel
            ?? throw new InvalidDataException($"'{Path.Combine(pipelineFolder, "pipeline.json")}' has no string \"text_cond_model\" (a TRELLIS-text pipeline names its CLIP model there, e.g. \"{TrellisTextModel}\").");
        return FromFolder(Locate(name, pipelineFolder), dtype, device);
    }

    /// <summary>The encoding of the empty prompt <c>[1, 77, width]</c>, computed once (TRELLIS-text's negative condition).</summary>
    public Tensor NullCondition => _null ??= EncodeTokens(new[] { "" }).DetachFromDisposeScope();

    /// <summary>Disposes the text model and the cached negative condition.</summary>
    public void Dispose()
    {
        _null?.Dispose();
        _null = null;
        Model.Dispose();
    }
}
