using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>The content of a TRELLIS checkpoint config <c>NAME.json</c>: <c>{"name": class, "args": {...}}</c>.</summary>
/// <param name="Name">The TRELLIS class name.</param>
/// <param name="Args">The constructor keyword arguments.</param>
public sealed record TrellisModelConfig(string Name, JsonObject Args)
{
    /// <summary>Reads a whole config object <c>{"name": class, "args": {...}}</c> (<c>args</c> may be absent or null).</summary>
    /// <param name="config">The JSON object.</param>
    /// <param name="source">What the config is called in error messages (e.g. its file).</param>
    /// <exception cref="InvalidDataException">Not an object, no string <c>name</c>, or <c>args</c> not an object.</exception>
    public static TrellisModelConfig FromJson(JsonElement config, string source = "TRELLIS model config") =>
        FromNode(config.ValueKind == JsonValueKind.Undefined ? null : JsonNode.Parse(config.GetRawText()), source);

    internal static TrellisModelConfig FromNode(JsonNode? root, string source)
    {
        try { return FromNodeChecked(root, source); }
        catch (ArgumentException e) when (e is not ArgumentNullException)
        {
            // System.Text.Json's JsonObject reports a repeated key this way when it first indexes the object.
            throw new InvalidDataException($"{source}: {e.Message} (a JSON key may appear only once).", e);
        }
    }

    private static TrellisModelConfig FromNodeChecked(JsonNode? root, string source)
    {
        if (root is not JsonObject obj) throw new InvalidDataException($"{source} is not a JSON object.");
        if (obj["name"] is not JsonValue nameValue || nameValue.GetValueKind() != JsonValueKind.String || nameValue.GetValue<string>() is not { Length: > 0 } name)
            throw new InvalidDataException($"{source} has no string \"name\".");
        var args = obj["args"] switch
        {
            null => new JsonObject(),
            JsonObject a => (JsonObject)a.DeepClone(),
            var other => throw new InvalidDataException($"{source}: \"args\" is not an object (found {other.GetValueKind()})."),
        };
        return new TrellisModelConfig(name, args);
    }
}

/// <summary>Builds a network from the <c>args</c> of a checkpoint config.</summary>
/// <param name="args">The constructor arguments.</param>
/// <param name="dtype">Parameter dtype.</param>
/// <param name="device">Device (null: CPU).</param>
public delegate nn.Module TrellisModelBuilder(JsonObject args, ScalarType dtype, Device? device);

/// <summary>
/// TRELLIS's checkpoint layout: <c>ckpts/NAME.json</c> (class name + constructor args) and <c>ckpts/NAME.safetensors</c>
/// (the state dict under TRELLIS's names, fp16 in the releases). Loads into a network built from the JSON in any dtype on
/// any device, strictly by default (every missing, unexpected and mis-shaped tensor is reported in one
/// <see cref="StateDictMismatchException"/> before any weight is copied), and saves in the same layout.
/// Classes are found in a registry (<see cref="Register"/>) that other TRELLIS networks join.
/// </summary>
public static class TrellisCheckpoint
{
    private static readonly ConcurrentDictionary<string, TrellisModelBuilder> Builders = new(StringComparer.Ordinal);

    /// <summary>The .NET type of each built-in class (so a typed build rejects another class before building it).</summary>
    private static readonly Dictionary<string, Type> BuiltInTypes = new(StringComparer.Ordinal)
    {
        [SparseStructureFlowConfig.ClassName] = typeof(SparseStructureFlowModel),
        [SparseStructureEncoderConfig.ClassName] = typeof(SparseStructureEncoder),
        [SparseStructureDecoderConfig.ClassName] = typeof(SparseStructureDecoder),
        [SLatFlowConfig.ClassName] = typeof(SLatFlowModel),
        [SLatFlowConfig.ElasticClassName] = typeof(ElasticSLatFlowModel),
        [SLatEncoderConfig.ClassName] = typeof(SLatEncoder),
        [SLatGaussianDecoderConfig.ClassName] = typeof(SLatGaussianDecoder),
        [SLatMeshDecoderConfig.ClassName] = typeof(SLatMeshDecoder),
        [ElasticSLatEncoder.ClassName] = typeof(ElasticSLatEncoder),
        [ElasticSLatGaussianDecoder.ClassName] = typeof(ElasticSLatGaussianDecoder),
        [ElasticSLatMeshDecoder.ClassName] = typeof(ElasticSLatMeshDecoder),
    };

    static TrellisCheckpoint()
    {
        Register(SparseStructureFlowConfig.ClassName, (a, d, dev) => new SparseStructureFlowModel(SparseStructureFlowConfig.FromArgs(a), d, dev));
        Register(SparseStructureEncoderConfig.ClassName, (a, d, dev) => new SparseStructureEncoder(SparseStructureEncoderConfig.FromArgs(a), d, dev));
        Register(SparseStructureDecoderConfig.ClassName, (a, d, dev) => new SparseStructureDecoder(SparseStructureDecoderConfig.FromArgs(a), d, dev));
        // Stage 2 (the Elastic* classes have TRELLIS's identical forward; they add the training-time memory controller).
        Register(SLatFlowConfig.ClassName, (a, d, dev) => new SLatFlowModel(SLatFlowConfig.FromArgs(a), d, dev));
        Register(SLatFlowConfig.ElasticClassName, (a, d, dev) => new ElasticSLatFlowModel(SLatFlowConfig.FromArgs(a, SLatFlowConfig.ElasticClassName), d, dev));
        Register(SLatEncoderConfig.ClassName, (a, d, dev) => new SLatEncoder(SLatEncoderConfig.FromArgs(a), d, dev));
        Register(SLatGaussianDecoderConfig.ClassName, (a, d, dev) => new SLatGaussianDecoder(SLatGaussianDecoderConfig.FromArgs(a), d, dev));
        Register(SLatMeshDecoderConfig.ClassName, (a, d, dev) => new SLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(a), d, dev));
        Register(ElasticSLatEncoder.ClassName, (a, d, dev) => new ElasticSLatEncoder(SLatEncoderConfig.FromArgs(a), d, dev));
        Register(ElasticSLatGaussianDecoder.ClassName, (a, d, dev) => new ElasticSLatGaussianDecoder(SLatGaussianDecoderConfig.FromArgs(a), d, dev));
        Register(ElasticSLatMeshDecoder.ClassName, (a, d, dev) => new ElasticSLatMeshDecoder(SLatMeshDecoderConfig.FromArgs(a), d, dev));
    }

    /// <summary>Makes <paramref name="className"/> loadable (replacing an earlier builder of that name).</summary>
    /// <exception cref="ArgumentException">Empty class name.</exception>
    public static void Register(string className, TrellisModelBuilder builder)
    {
        if (string.IsNullOrWhiteSpace(className)) throw new ArgumentException("class name must not be empty.", nameof(className));
        ArgumentNullException.ThrowIfNull(builder);
        Builders[className] = builder;
    }

    /// <summary>The class names that can be built.</summary>
    public static IReadOnlyCollection<string> RegisteredClasses => Builders.Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();

    /// <summary>
    /// The two files of a checkpoint: <paramref name="path"/> may be the common stem (<c>ckpts/NAME</c>, as TRELLIS's
    /// <c>from_pretrained</c>) or either file.
    /// </summary>
    internal static (string Json, string SafeTensors) ResolvePaths(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        string stem = path;
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) stem = path[..^5];
        else if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) stem = path[..^12];
        return (stem + ".json", stem + ".safetensors");
    }

    /// <summary>Reads a checkpoint config (<c>NAME.json</c>).</summary>
    /// <exception cref="FileNotFoundException">No config file.</exception>
    /// <exception cref="InvalidDataException">Not JSON, or no string <c>name</c> / object <c>args</c>.</exception>
    public static TrellisModelConfig ReadConfig(string path)
    {
        var (json, _) = ResolvePaths(path);
        if (!File.Exists(json)) throw new FileNotFoundException($"TRELLIS checkpoint config '{json}' does not exist.", json);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(json)); }
        catch (JsonException e) { throw new InvalidDataException($"TRELLIS checkpoint config '{json}' is not valid JSON: {e.Message}", e); }
        return TrellisModelConfig.FromNode(root, $"TRELLIS checkpoint config '{json}'");
    }

    /// <summary>
    /// Builds the network a config describes, with fresh (untrained) weights. The config is read and range-checked
    /// first, and the network is built on the meta device (no memory) to count its tensor elements against
    /// <paramref name="maxElements"/> before anything is allocated.
    /// </summary>
    /// <param name="config">Class name and constructor arguments.</param>
    /// <param name="dtype">Parameter dtype (float32 by default).</param>
    /// <param name="device">Target device (CPU by default; <c>torch.META</c> builds shapes only).</param>
    /// <param name="maxElements">The most tensor elements (parameters + buffers) the network may hold
    /// (<see cref="TrellisConfigLimits.DefaultMaxElements"/> by default; raise it for a genuinely larger model).</param>
    /// <exception cref="NotSupportedException">The class is not registered, or an argument value TRELLIS itself cannot run.</exception>
    /// <exception cref="ArgumentException">Invalid arguments (all listed), or a network larger than <paramref name="maxElements"/>.</exception>
    public static nn.Module Build(TrellisModelConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null,
        long maxElements = TrellisConfigLimits.DefaultMaxElements)
    {
        ArgumentNullException.ThrowIfNull(config);
        var builder = BuilderOf(config);
        var shape = BuildShape(config, builder, dtype, maxElements);
        if (device is { type: DeviceType.META }) return shape;
        shape.Dispose();
        return builder((JsonObject)config.Args.DeepClone(), dtype, device);
    }

    /// <summary>As <see cref="Build(TrellisModelConfig, ScalarType, Device?, long)"/>, typed.</summary>
    /// <exception cref="ArgumentException">The config names another class (or any reason of the untyped overload).</exception>
    public static T Build<T>(TrellisModelConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null,
        long maxElements = TrellisConfigLimits.DefaultMaxElements) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(config);
        if (BuiltInTypes.TryGetValue(config.Name, out var type) && !typeof(T).IsAssignableFrom(type))
            throw new ArgumentException($"config names class '{config.Name}', which is not a {typeof(T).Name}.", nameof(config));
        var m = Build(config, dtype, device, maxElements);
        if (m is T t) return t;
        m.Dispose();
        throw new ArgumentException($"config names class '{config.Name}', which is not a {typeof(T).Name}.", nameof(config));
    }

    private static TrellisModelBuilder BuilderOf(TrellisModelConfig config) =>
        Builders.TryGetValue(config.Name, out var builder) ? builder
        : throw new NotSupportedException($"TRELLIS class '{config.Name}' is not supported; known classes: {string.Join(", ", RegisteredClasses)}.");

    /// <summary>Builds <paramref name="config"/> on the meta device and checks its element count.</summary>
    private static nn.Module BuildShape(TrellisModelConfig config, TrellisModelBuilder builder, ScalarType dtype, long maxElements)
    {
        if (maxElements < 1) throw new ArgumentException($"maxElements must be >= 1, got {maxElements}.", nameof(maxElements));
        var shape = builder((JsonObject)config.Args.DeepClone(), dtype, torch.META);
        try
        {
            long count = 0;
            bool overflow = false;
            foreach (var (_, t) in shape.state_dict())
            {
                try { count = checked(count + t.shape.Aggregate(1L, (a, b) => checked(a * b))); }
                catch (OverflowException) { overflow = true; break; }
            }
            if (overflow || count > maxElements)
                throw new ArgumentException(
                    $"a {config.Name} with these arguments holds {(overflow ? "more than 2^63" : count.ToString("N0", System.Globalization.CultureInfo.InvariantCulture))} " +
                    $"tensor elements, more than the bound of {maxElements.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)} " +
                    "(pass a larger maxElements to build a genuinely larger model).", nameof(config));
            return shape;
        }
        catch
        {
            shape.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads a checkpoint pair: builds the network from <c>NAME.json</c> in <paramref name="dtype"/> on
    /// <paramref name="device"/> and copies the weights of <c>NAME.safetensors</c> into it (converting from the stored dtype).
    /// Nothing is allocated before the config is validated, the network's size is checked against
    /// <paramref name="maxElements"/> and every tensor shape is compared with the weight file's header.
    /// </summary>
    /// <param name="path">The stem <c>ckpts/NAME</c> or either file.</param>
    /// <param name="dtype">Parameter dtype (float32 by default).</param>
    /// <param name="device">Target device (CPU by default).</param>
    /// <param name="strict">Report missing and unexpected tensors (mis-shaped ones are always reported).</param>
    /// <param name="maxElements">The most tensor elements the network may hold (see <see cref="TrellisConfigLimits.DefaultMaxElements"/>).</param>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="InvalidDataException">A corrupt or truncated file, or a config whose arguments are invalid (the
    /// message names the file and every bad key) or describe a network larger than <paramref name="maxElements"/>.</exception>
    /// <exception cref="NotSupportedException">The config names a class that is not registered, or a setting TRELLIS itself cannot run.</exception>
    /// <exception cref="StateDictMismatchException">The weights do not fit the network.</exception>
    public static nn.Module Load(string path, ScalarType dtype = ScalarType.Float32, Device? device = null, bool strict = true,
        long maxElements = TrellisConfigLimits.DefaultMaxElements)
    {
        var (json, st) = ResolvePaths(path);
        var config = ReadConfig(path);
        if (!File.Exists(st)) throw new FileNotFoundException($"TRELLIS checkpoint weights '{st}' do not exist.", st);
        // Validate the weight file's header, the config and the shapes before building the real (possibly large) network.
        var found = HeaderShapes(st);
        TrellisModelBuilder builder;
        try { builder = BuilderOf(config); }
        catch (NotSupportedException e) { throw new NotSupportedException($"TRELLIS checkpoint config '{json}': {e.Message}", e); }
        try
        {
            using var shape = BuildShape(config, builder, dtype, maxElements);
            Check(shape, found, strict, $"'{st}'");
        }
        catch (ArgumentException e) when (e.ParamName is not nameof(maxElements))
        {
            throw new InvalidDataException($"TRELLIS checkpoint config '{json}': {e.Message}", e);
        }
        catch (NotSupportedException e)
        {
            throw new NotSupportedException($"TRELLIS checkpoint config '{json}': {e.Message}", e);
        }
        var model = builder((JsonObject)config.Args.DeepClone(), dtype, device);
        try
        {
            LoadWeights(model, st, strict);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }

    /// <summary>As <see cref="Load(string, ScalarType, Device?, bool, long)"/>, typed.</summary>
    /// <exception cref="InvalidDataException">The checkpoint holds another class.</exception>
    public static T Load<T>(string path, ScalarType dtype = ScalarType.Float32, Device? device = null, bool strict = true,
        long maxElements = TrellisConfigLimits.DefaultMaxElements) where T : nn.Module
    {
        var m = Load(path, dtype, device, strict, maxElements);
        if (m is T t) return t;
        var name = (m as ITrellisModel)?.TrellisClassName ?? m.GetType().Name;
        m.Dispose();
        throw new InvalidDataException($"checkpoint '{path}' holds a {name}, not a {typeof(T).Name}.");
    }

    private static Dictionary<string, (long[] Shape, ScalarType DType)> HeaderShapes(string safetensorsPath)
    {
        var (infos, _, _) = SafeTensors.ReadHeader(safetensorsPath);
        var found = new Dictionary<string, (long[] Shape, ScalarType DType)>(StringComparer.Ordinal);
        foreach (var i in infos)
            if (!found.TryAdd(i.Name, (i.Shape, DTypeOf(i.DType))))
                throw new InvalidDataException($"safetensors file '{safetensorsPath}' holds tensor '{i.Name}' twice.");
        return found;
    }

    /// <summary>Loads the weights of a safetensors file into <paramref name="model"/> (checked first; see <see cref="LoadStateDict"/>).</summary>
    public static void LoadWeights(nn.Module model, string safetensorsPath, bool strict = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        Check(model, HeaderShapes(safetensorsPath), strict, $"'{safetensorsPath}'");
        var tensors = SafeTensors.Load(safetensorsPath);
        try
        {
            Copy(model, tensors);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Copies a state dict (TRELLIS names) into <paramref name="model"/>, converting dtype and device. Persistent buffers
    /// (such as <c>pos_emb</c>) are loaded when present and keep their computed values when absent. Before anything is
    /// copied, every missing (strict only), unexpected (strict only), mis-shaped or non-floating-for-floating tensor is
    /// reported in one <see cref="StateDictMismatchException"/>.
    /// </summary>
    public static void LoadStateDict(nn.Module model, IReadOnlyDictionary<string, Tensor> stateDict, bool strict = true, string source = "the given state dict")
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(stateDict);
        Check(model, stateDict.ToDictionary(kv => kv.Key, kv => (kv.Value.shape, kv.Value.dtype)), strict, source);
        Copy(model, stateDict);
    }

    private static ScalarType DTypeOf(string safetensorsDType) => safetensorsDType switch
    {
        "F64" => ScalarType.Float64, "F32" => ScalarType.Float32, "F16" => ScalarType.Float16, "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64, "I32" => ScalarType.Int32, "I16" => ScalarType.Int16, "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte, "BOOL" => ScalarType.Bool,
        _ => throw new InvalidDataException($"unknown safetensors dtype '{safetensorsDType}'."),
    };

    private static void Check(nn.Module model, IReadOnlyDictionary<string, (long[] Shape, ScalarType DType)> found, bool strict, string source)
    {
        var expected = model.state_dict();
        var buffers = model.named_buffers().Select(b => b.name).ToHashSet(StringComparer.Ordinal);
        var missing = new List<string>();
        var unexpected = new List<string>();
        var mismatched = new List<ShapeMismatch>();
        var wrongType = new List<string>();
        foreach (var (name, tensor) in expected.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!found.TryGetValue(name, out var f))
            {
                if (strict && !buffers.Contains(name)) missing.Add(name);
                continue;
            }
            if (!f.Shape.SequenceEqual(tensor.shape)) mismatched.Add(new ShapeMismatch(name, tensor.shape, f.Shape));
            if (tensor.is_floating_point() && !IsFloating(f.DType)) wrongType.Add($"{name}: expected a floating tensor, found {f.DType}");
        }
        if (strict)
            unexpected.AddRange(found.Keys.Where(k => !expected.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal));
        if (missing.Count + unexpected.Count + mismatched.Count + wrongType.Count > 0)
            throw new StateDictMismatchException(source, missing, unexpected, mismatched, wrongType);
    }

    private static bool IsFloating(ScalarType t) => t is ScalarType.Float64 or ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16;

    private static void Copy(nn.Module model, IReadOnlyDictionary<string, Tensor> source)
    {
        var expected = model.state_dict();
        using var noGrad = torch.no_grad();
        foreach (var (name, dst) in expected)
        {
            if (!source.TryGetValue(name, out var src)) continue;
            if (dst.is_meta) continue;
            using var scope = torch.NewDisposeScope();
            dst.copy_(src.to(dst.dtype).to(dst.device));
        }
    }

    /// <summary>
    /// Saves <paramref name="model"/> as a TRELLIS checkpoint pair (<c>NAME.json</c> + <c>NAME.safetensors</c>), each file
    /// written atomically. <paramref name="storeDType"/> converts floating tensors (e.g. float16, as the releases).
    /// </summary>
    /// <param name="model">A network implementing <see cref="ITrellisModel"/>.</param>
    /// <param name="path">The stem <c>ckpts/NAME</c> or either file name.</param>
    /// <param name="storeDType">dtype for floating tensors in the file; null keeps each tensor's dtype.</param>
    /// <exception cref="ArgumentException">The model is not a TRELLIS network, or the store dtype is not floating.</exception>
    public static void Save(nn.Module model, string path, ScalarType? storeDType = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model is not ITrellisModel tm)
            throw new ArgumentException($"model of type {model.GetType().Name} does not implement {nameof(ITrellisModel)}, so its TRELLIS class and args are unknown.", nameof(model));
        if (storeDType is { } sd && !IsFloating(sd))
            throw new ArgumentException($"storeDType must be a floating dtype, got {sd}.", nameof(storeDType));
        var (json, st) = ResolvePaths(path);
        using (var scope = torch.NewDisposeScope())
        {
            var sdict = new Dictionary<string, Tensor>();
            foreach (var (name, t) in model.state_dict())
            {
                if (t.is_meta) throw new ArgumentException($"tensor '{name}' is on the meta device and has no values to save.", nameof(model));
                sdict[name] = storeDType is { } d && t.is_floating_point() && t.dtype != d ? t.detach().to(d) : t.detach();
            }
            SafeTensors.Save(st, sdict);
        }
        var root = new JsonObject { ["name"] = tm.TrellisClassName, ["args"] = tm.ToConfigArgs() };
        WriteAtomically(json, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    private static void WriteAtomically(string path, string text) =>
        AtomicFile.Write(path, fs => fs.Write(new UTF8Encoding(false).GetBytes(text)));
}
