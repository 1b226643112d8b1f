using System.Text.Json;

namespace MdtDist.Trellis.Pipeline;

/// <summary>
/// A TRELLIS <c>pipeline.json</c>, read and validated before any network is built: the model map, the two stage
/// samplers, the structured-latent normalisation and the condition model it names. The one reader of <c>pipeline.json</c>.
/// </summary>
/// <param name="Models">Model key (e.g. <c>sparse_structure_flow_model</c>) → checkpoint path relative to the folder
/// (<c>ckpts/NAME</c>, or <c>owner/repo/ckpts/NAME</c>).</param>
/// <param name="StructureSampler">The stage-1 sampler (<c>sparse_structure_sampler</c>; TRELLIS-image-large's when absent).</param>
/// <param name="LatentSampler">The stage-2 sampler (<c>slat_sampler</c>; TRELLIS-image-large's when absent).</param>
/// <param name="Normalization"><c>slat_normalization</c> (TRELLIS-image-large's when absent).</param>
public sealed record TrellisPipelineConfig(
    IReadOnlyDictionary<string, string> Models, StageSampler StructureSampler, StageSampler LatentSampler, SLatNormalization Normalization)
{
    /// <summary>The models a pipeline needs: the two flows and the structure decoder.</summary>
    public static IReadOnlyList<string> RequiredModels { get; } = new[] { "sparse_structure_flow_model", "sparse_structure_decoder", "slat_flow_model" };

    /// <summary><c>image_cond_model</c>: the torch.hub name of the image condition model (<c>dinov2_vitl14_reg</c>), or null.</summary>
    public string? ImageConditionModel { get; init; }

    /// <summary><c>text_cond_model</c>: the name of the text condition model (<c>openai/clip-vit-large-patch14</c>), or null.</summary>
    public string? TextConditionModel { get; init; }

    /// <summary>Largest <c>pipeline.json</c> read (TRELLIS's are about 2 kB).</summary>
    public const long MaxFileBytes = 1 << 20;

    /// <summary>Reads and validates <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">Not JSON, too large, or any key of the wrong type or out of range; the message names
    /// the file and every offending key.</exception>
    public static TrellisPipelineConfig Read(string path) => ReadFile(path, requireModels: true);

    /// <summary>
    /// Reads the <c>pipeline.json</c> of the model folder <paramref name="folder"/>; without <paramref name="requireModels"/>
    /// the networks a pipeline needs may be absent (a reader that wants only the condition model).
    /// </summary>
    /// <exception cref="FileNotFoundException">The folder has no <c>pipeline.json</c>.</exception>
    internal static TrellisPipelineConfig ReadFolder(string folder, bool requireModels)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var pj = Path.Combine(folder, "pipeline.json");
        if (!File.Exists(pj)) throw new FileNotFoundException($"'{folder}' is not a TRELLIS model folder: '{pj}' does not exist.", pj);
        return ReadFile(pj, requireModels);
    }

    private static TrellisPipelineConfig ReadFile(string path, bool requireModels)
    {
        ArgumentNullException.ThrowIfNull(path);
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"'{path}' does not exist.", path);
        if (info.Length > MaxFileBytes) throw new InvalidDataException($"'{path}': {info.Length} bytes is too large for a pipeline.json (at most {MaxFileBytes}).");
        return ParseText(File.ReadAllText(path), $"'{path}'", requireModels);
    }

    /// <summary>Parses and validates the text of a <c>pipeline.json</c>.</summary>
    /// <param name="json">The file's text.</param>
    /// <param name="source">Names the file in error messages.</param>
    /// <exception cref="InvalidDataException">Not JSON, or any key of the wrong type or out of range (all listed at once).</exception>
    public static TrellisPipelineConfig Parse(string json, string source = "pipeline.json") => ParseText(json, source, requireModels: true);

    private static TrellisPipelineConfig ParseText(string json, string source, bool requireModels)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 64 }); }
        catch (JsonException e) { throw new InvalidDataException($"{source} is not valid JSON: {e.Message}", e); }
        using var docScope = doc;
        var reader = new PipelineJson(source);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{source}: the root must be an object, found {PipelineJson.Kind(root)}.");
        var args = root;
        string at = "";
        if (root.TryGetProperty("args", out var a))
        {
            if (a.ValueKind == JsonValueKind.Object) { args = a; at = "args"; }
            else reader.Add("args", $"must be an object, found {PipelineJson.Kind(a)}");
        }
        string Key(string k) => at.Length == 0 ? k : $"{at}.{k}";

        var models = new Dictionary<string, string>(StringComparer.Ordinal);
        if (reader.TryObject(args, at, "models", required: requireModels, out var m))
        {
            foreach (var p in m.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String || p.Value.GetString() is not { Length: > 0 } rel)
                    reader.Add($"{Key("models")}.{p.Name}", $"must be a non-empty string (a checkpoint path), found {PipelineJson.Kind(p.Value)}");
                else if (Path.IsPathRooted(rel) || rel.Split('/', '\\').Contains(".."))
                    reader.Add($"{Key("models")}.{p.Name}", $"must be a path inside the model folder, found '{rel}'");
                else models[p.Name] = rel;
            }
            foreach (var required in RequiredModels.Where(r => requireModels && !m.TryGetProperty(r, out _)))
                reader.Add($"{Key("models")}.{required}", "is missing");
        }

        StageSampler? Sampler(string key)
        {
            if (!args.TryGetProperty(key, out var s)) return StageSampler.TrellisImageLarge;
            return StageSampler.Read(reader, s, Key(key));
        }
        var ss = Sampler("sparse_structure_sampler");
        var slat = Sampler("slat_sampler");

        var norm = SLatNormalization.TrellisImageLarge;
        if (reader.TryObject(args, at, "slat_normalization", required: false, out var n))
        {
            string nk = Key("slat_normalization");
            var mean = reader.Numbers(n, nk, "mean", required: true);
            var std = reader.Numbers(n, nk, "std", required: true);
            if (mean is not null && std is not null)
            {
                if (mean.Length != std.Length || mean.Length == 0)
                    reader.Add(nk, $"mean and std must have the same, non-zero length, found {mean.Length} and {std.Length}");
                else if (Array.FindIndex(std, v => !(v > 0)) is var idx and >= 0)
                    reader.Add($"{nk}.std[{idx}]", $"must be > 0, found {std[idx]}");
                else norm = new SLatNormalization(mean, std);
            }
        }
        string? NonEmpty(string key) => reader.String(args, at, key, required: false) is { } v && !string.IsNullOrWhiteSpace(v) ? v : null;
        var imageCond = NonEmpty("image_cond_model");
        var textCond = NonEmpty("text_cond_model");
        reader.ThrowIfAny();
        return new TrellisPipelineConfig(models, ss!, slat!, norm) { ImageConditionModel = imageCond, TextConditionModel = textCond };
    }
}
