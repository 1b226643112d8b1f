using System.Text.Json;
using MdtDist.Core.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>One golden case: a manifest NAME.json and its tensors NAME.safetensors.</summary>
public sealed class GoldenCase : IDisposable
{
    private Dictionary<string, Tensor>? _tensors;

    public GoldenCase(string manifestPath)
    {
        ManifestPath = manifestPath;
        Manifest = JsonDocument.Parse(File.ReadAllText(manifestPath));
        var root = Manifest.RootElement;
        Name = root.GetProperty("case").GetString()!;
        Family = root.GetProperty("family").GetString()!;
        Kind = root.TryGetProperty("kind", out var k) ? k.GetString() ?? "" : "";
        EntryPoint = root.GetProperty("reference").TryGetProperty("entry_point", out var e) ? e.GetString() ?? "" : "";
        TensorFile = Path.Combine(Path.GetDirectoryName(manifestPath)!, root.GetProperty("tensor_file").GetString()!);
    }

    public string ManifestPath { get; }
    public JsonDocument Manifest { get; }
    public JsonElement Root => Manifest.RootElement;
    public string Name { get; }
    public string Family { get; }
    public string Kind { get; }
    public string EntryPoint { get; }
    public string TensorFile { get; }

    /// <summary>The TRELLIS config class name (config.name), or "" when the case has no model.</summary>
    public string ConfigName => Root.TryGetProperty("config", out var c) && c.ValueKind == JsonValueKind.Object && c.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "";
    public JsonElement Config => Root.GetProperty("config");
    public JsonElement Settings => Root.GetProperty("settings");

    /// <summary>All tensors of the case (CPU, stored dtype: F64 / I64 / U8).</summary>
    public IReadOnlyDictionary<string, Tensor> Tensors => _tensors ??= SafeTensors.Load(TensorFile);

    public Tensor this[string name] => Tensors.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"golden case {Name}: no tensor '{name}' in {TensorFile}");

    public bool Has(string name) => Tensors.ContainsKey(name);

    /// <summary>Tensors whose name starts with <paramref name="prefix"/>, with the prefix removed (e.g. "model." → a state dict).</summary>
    public Dictionary<string, Tensor> WithPrefix(string prefix) =>
        Tensors.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);

    /// <summary>Names listed under manifest.tensors[role] (model, inputs, outputs, grads, ...).</summary>
    public IReadOnlyList<string> Role(string role) =>
        Root.GetProperty("tensors").TryGetProperty(role, out var r) ? r.EnumerateArray().Select(x => x.GetString()!).ToList() : new List<string>();

    public override string ToString() => Name;

    public void Dispose()
    {
        if (_tensors != null) foreach (var t in _tensors.Values) t.Dispose();
        Manifest.Dispose();
    }
}

/// <summary>
/// Runs one kind of golden case. Runners are discovered by reflection: every non-abstract class implementing this
/// interface in the test assembly is asked whether it can run a case. Exactly one must claim each case.
/// </summary>
public interface IGoldenRunner
{
    bool CanRun(GoldenCase c);
    void Run(GoldenCase c);
}

public static class GoldenAssert
{
    /// <summary>The float64 parity bar: max|diff| / max(1, max|ref|).</summary>
    public const double DefaultTolerance = 1e-9;

    public static double RelativeError(Tensor expected, Tensor actual)
    {
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64).cpu();
        var a = actual.detach().to(ScalarType.Float64).cpu();
        if (e.numel() == 0) return 0;
        double diff = (e - a).abs().max().item<double>();
        double scale = Math.Max(1.0, e.abs().max().item<double>());
        return diff / scale;
    }

    public static void Close(GoldenCase c, string name, Tensor expected, Tensor actual, double tolerance = DefaultTolerance)
    {
        if (!expected.shape.SequenceEqual(actual.shape))
            throw new Xunit.Sdk.XunitException($"{c.Name}: '{name}' shape [{string.Join(", ", actual.shape)}], expected [{string.Join(", ", expected.shape)}]");
        if (!expected.is_floating_point())
        {
            using var eq = expected.to(ScalarType.Int64).cpu().eq(actual.to(ScalarType.Int64).cpu()).all();
            if (!eq.item<bool>()) throw new Xunit.Sdk.XunitException($"{c.Name}: integer tensor '{name}' differs from the reference");
            return;
        }
        double rel = RelativeError(expected, actual);
        if (!(rel <= tolerance))
            throw new Xunit.Sdk.XunitException($"{c.Name}: '{name}' relative error {rel:E3} > {tolerance:E1}");
    }

    /// <summary>Compares golden output <paramref name="name"/> (e.g. "out.v") with <paramref name="actual"/>.</summary>
    public static void Output(GoldenCase c, string name, Tensor actual, double tolerance = DefaultTolerance) =>
        Close(c, name, c[name], actual, tolerance);
}
