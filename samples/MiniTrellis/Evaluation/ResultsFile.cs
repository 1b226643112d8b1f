using System.Text.Json;
using System.Text.Json.Serialization;

namespace MiniTrellis.Evaluation;

/// <summary>One row of <c>results.json</c>.</summary>
public sealed record ResultEntry(
    [property: JsonPropertyName("label")] string Label,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("steps")] int[] Steps,
    [property: JsonPropertyName("evaluations")] int[] Evaluations,
    [property: JsonPropertyName("seconds_per_sample")] double SecondsPerSample,
    [property: JsonPropertyName("seconds_per_sample_stage1")] double Stage1SecondsPerSample,
    [property: JsonPropertyName("seconds_per_sample_stage2")] double Stage2SecondsPerSample,
    [property: JsonPropertyName("cov")] double Cov,
    [property: JsonPropertyName("mmd")] double Mmd,
    [property: JsonPropertyName("nna")] double Nna,
    [property: JsonPropertyName("class_fidelity")] double ClassFidelity,
    [property: JsonPropertyName("appearance_error")] double AppearanceError,
    [property: JsonPropertyName("empty_samples")] int EmptySamples);

/// <summary>The data-vs-data floor of the set metrics.</summary>
public sealed record FloorEntry(
    [property: JsonPropertyName("cov")] double Cov,
    [property: JsonPropertyName("mmd")] double Mmd,
    [property: JsonPropertyName("nna")] double Nna,
    [property: JsonPropertyName("class_fidelity")] double ClassFidelity);

/// <summary>What the distillation cost.</summary>
public sealed record DistillationEntry(
    [property: JsonPropertyName("stage1_steps")] int Stage1Steps,
    [property: JsonPropertyName("stage2_steps")] int Stage2Steps,
    [property: JsonPropertyName("seconds")] double Seconds);

/// <summary>How the numbers were produced.</summary>
public sealed record SetupEntry(
    [property: JsonPropertyName("grid")] int Grid,
    [property: JsonPropertyName("classes")] string[] Classes,
    [property: JsonPropertyName("generated_samples")] int GeneratedSamples,
    [property: JsonPropertyName("reference_samples")] int ReferenceSamples,
    [property: JsonPropertyName("teacher_cfg")] double TeacherCfg,
    [property: JsonPropertyName("threads")] int Threads,
    [property: JsonPropertyName("total_seconds")] double TotalSeconds,
    [property: JsonPropertyName("process_cpu_seconds")] double ProcessCpuSeconds);

/// <summary>The file <c>DIR/results.json</c> of the main job.</summary>
public sealed record ResultsFile(
    [property: JsonPropertyName("rows")] IReadOnlyList<ResultEntry> Rows,
    [property: JsonPropertyName("reference_floor")] FloorEntry ReferenceFloor,
    [property: JsonPropertyName("distillation")] DistillationEntry Distillation,
    [property: JsonPropertyName("setup")] SetupEntry Setup)
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>The entry of a result row.</summary>
    public static ResultEntry RowOf(ResultRow r) => new(r.Label, r.Model, r.Steps, r.Evaluations, r.SecondsPerSample, r.Stage1SecondsPerSample,
        r.Stage2SecondsPerSample, r.Cov, r.Mmd, r.Nna, r.ClassFidelity, r.AppearanceError, r.EmptySamples);

    /// <summary>Writes the file atomically.</summary>
    public static void Write(string path, ResultsFile file) => Model.MiniTrellisModels.WriteTextAtomically(path, JsonSerializer.Serialize(file, Json));

    /// <summary>Reads a file written by <see cref="Write"/>.</summary>
    /// <exception cref="InvalidDataException">Not a results file.</exception>
    public static ResultsFile Read(string path) =>
        JsonSerializer.Deserialize<ResultsFile>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"'{path}' holds no results.");
}
