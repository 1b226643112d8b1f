using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>One weight file of a training run: <c>ckpts/NAME_stepNNNNNNN.pt</c> or <c>ckpts/NAME_emaRATE_stepNNNNNNN.pt</c>.</summary>
/// <param name="Path">The file.</param>
/// <param name="Model">The model key of the run's config (<c>denoiser</c>).</param>
/// <param name="EmaRate">The EMA rate as written in the name (e.g. "0.9999"), or null for the raw weights.</param>
/// <param name="Step">The training step.</param>
public sealed record TrainingCheckpointFile(string Path, string Model, string? EmaRate, long Step);

/// <summary>
/// A training run as TRELLIS's trainer (and so MDT-dist's) leaves it: <c>RUN/config.json</c> whose <c>models</c> maps a
/// key (<c>denoiser</c>, <c>teacher</c>, ...) to <c>{"name": class, "args": {...}}</c>, and
/// <c>RUN/ckpts/KEY[_emaRATE]_stepNNNNNNN.pt</c> written by <c>torch.save(state_dict)</c>. Builds the network through
/// <see cref="TrellisCheckpoint.Build"/> and loads the weights with <see cref="TrellisCheckpoint.LoadStateDict"/>, so
/// the strictness is the same as for a released <c>NAME.json</c> + <c>NAME.safetensors</c> pair.
/// </summary>
public static class TrainingRunCheckpoint
{
    private static readonly Regex FileName = new(@"^(?<model>.+?)(?:_ema(?<ema>[0-9.eE+-]+))?_step(?<step>\d+)\.pt$", RegexOptions.CultureInvariant);

    /// <summary>True when <paramref name="folder"/> looks like a training run (a <c>config.json</c> with <c>models</c> and a <c>ckpts</c> folder).</summary>
    public static bool IsTrainingRun(string folder) =>
        Directory.Exists(Path.Combine(folder, "ckpts")) && File.Exists(Path.Combine(folder, "config.json"));

    /// <summary>The weight files in <c>RUN/ckpts</c>, ordered by model, EMA rate and step.</summary>
    /// <exception cref="DirectoryNotFoundException">No <c>ckpts</c> folder.</exception>
    public static IReadOnlyList<TrainingCheckpointFile> List(string runFolder)
    {
        var ckpts = Path.Combine(runFolder, "ckpts");
        if (!Directory.Exists(ckpts)) throw new DirectoryNotFoundException($"training run '{runFolder}' has no ckpts folder.");
        var list = new List<TrainingCheckpointFile>();
        foreach (var f in Directory.GetFiles(ckpts, "*.pt"))
        {
            var m = FileName.Match(Path.GetFileName(f));
            if (!m.Success) continue;
            list.Add(new TrainingCheckpointFile(f, m.Groups["model"].Value, m.Groups["ema"].Success ? m.Groups["ema"].Value : null,
                long.Parse(m.Groups["step"].Value, CultureInfo.InvariantCulture)));
        }
        return list.OrderBy(x => x.Model, StringComparer.Ordinal).ThenBy(x => x.EmaRate ?? "", StringComparer.Ordinal).ThenBy(x => x.Step).ToList();
    }

    /// <summary>
    /// Picks a weight file: model <paramref name="model"/>, the EMA rate <paramref name="emaRate"/> (null: the EMA
    /// weights if the run has exactly one rate, else the raw weights; "" forces the raw weights), the latest step unless
    /// <paramref name="step"/> is given.
    /// </summary>
    /// <exception cref="FileNotFoundException">No file matches; the message lists what the run holds.</exception>
    public static TrainingCheckpointFile Find(string runFolder, string model = "denoiser", string? emaRate = null, long? step = null)
    {
        var all = List(runFolder);
        var ofModel = all.Where(f => f.Model == model).ToList();
        string? rate = emaRate;
        if (rate is null)
        {
            var rates = ofModel.Select(f => f.EmaRate).Where(r => r is not null).Distinct().ToList();
            rate = rates.Count == 1 ? rates[0] : "";
        }
        var pick = ofModel.Where(f => (f.EmaRate ?? "") == rate && (step is null || f.Step == step)).OrderBy(f => f.Step).LastOrDefault();
        return pick ?? throw new FileNotFoundException(
            $"training run '{runFolder}' has no checkpoint for model '{model}'" + (rate is { Length: > 0 } ? $", EMA {rate}" : ", raw weights") +
            (step is null ? "" : $", step {step}") + "; it holds: " +
            (all.Count == 0 ? "no *_stepNNNNNNN.pt files" : string.Join(", ", all.Select(f => System.IO.Path.GetFileName(f.Path)))) + ".");
    }

    /// <summary>The <c>models.MODEL</c> entry of <c>RUN/config.json</c> as a checkpoint config.</summary>
    /// <exception cref="FileNotFoundException">No config.json.</exception>
    /// <exception cref="InvalidDataException">Not JSON, or no <c>models.MODEL</c> with a string name and object args.</exception>
    public static TrellisModelConfig ReadModelConfig(string runFolder, string model = "denoiser")
    {
        var path = Path.Combine(runFolder, "config.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"training run config '{path}' does not exist.", path);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"training run config '{path}' is not valid JSON: {e.Message}", e); }
        if (root?["models"] is not JsonObject models)
            throw new InvalidDataException($"training run config '{path}' has no \"models\" object.");
        if (models[model] is not JsonObject entry)
            throw new InvalidDataException($"training run config '{path}' has no \"models.{model}\"; models: {string.Join(", ", models.Select(kv => kv.Key))}.");
        if (entry["name"] is not JsonValue nv || !nv.TryGetValue<string>(out var name) || string.IsNullOrEmpty(name))
            throw new InvalidDataException($"training run config '{path}': \"models.{model}\" has no string \"name\".");
        var args = entry["args"] switch
        {
            null => new JsonObject(),
            JsonObject a => (JsonObject)a.DeepClone(),
            _ => throw new InvalidDataException($"training run config '{path}': \"models.{model}.args\" is not an object."),
        };
        return new TrellisModelConfig(name, args);
    }

    /// <summary>
    /// Builds <c>models.MODEL</c> of the run's config in <paramref name="dtype"/> on <paramref name="device"/> and loads a
    /// weight file into it (see <see cref="Find"/> for the choice).
    /// </summary>
    /// <exception cref="StateDictMismatchException">The weights do not fit the network (all differences listed).</exception>
    public static nn.Module Load(string runFolder, string model = "denoiser", string? emaRate = null, long? step = null,
        ScalarType dtype = ScalarType.Float32, Device? device = null, bool strict = true)
    {
        var config = ReadModelConfig(runFolder, model);
        var file = Find(runFolder, model, emaRate, step);
        var sd = PyTorchCheckpoint.LoadStateDict(file.Path);
        try
        {
            var net = TrellisCheckpoint.Build(config, dtype, device);
            try
            {
                TrellisCheckpoint.LoadStateDict(net, sd, strict, $"'{file.Path}'");
            }
            catch
            {
                net.Dispose();
                throw;
            }
            return net;
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }

    /// <summary>As <see cref="Load"/>, typed.</summary>
    /// <exception cref="InvalidDataException">The run's model is another class.</exception>
    public static T Load<T>(string runFolder, string model = "denoiser", string? emaRate = null, long? step = null,
        ScalarType dtype = ScalarType.Float32, Device? device = null, bool strict = true) where T : nn.Module
    {
        var m = Load(runFolder, model, emaRate, step, dtype, device, strict);
        if (m is T t) return t;
        var name = (m as ITrellisModel)?.TrellisClassName ?? m.GetType().Name;
        m.Dispose();
        throw new InvalidDataException($"training run '{runFolder}' model '{model}' is a {name}, not a {typeof(T).Name}.");
    }
}
