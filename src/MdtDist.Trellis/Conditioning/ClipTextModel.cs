using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// The arguments of CLIP's text tower, as transformers' <c>CLIPTextConfig</c> names them (the <c>text_config</c> of
/// openai/clip-vit-large-patch14's <c>config.json</c>). Defaults are transformers' defaults.
/// </summary>
/// <param name="VocabSize"><c>vocab_size</c> (49408 for CLIP).</param>
/// <param name="HiddenSize"><c>hidden_size</c>, the width (768 for ViT-L/14's text tower).</param>
/// <param name="IntermediateSize"><c>intermediate_size</c>, the MLP width (4 × hidden).</param>
/// <param name="NumHiddenLayers"><c>num_hidden_layers</c>.</param>
/// <param name="NumAttentionHeads"><c>num_attention_heads</c>.</param>
/// <param name="MaxPositionEmbeddings"><c>max_position_embeddings</c>, the context length (77).</param>
/// <param name="HiddenAct"><c>hidden_act</c>: <c>quick_gelu</c> (CLIP's x·σ(1.702x)) or <c>gelu</c>.</param>
/// <param name="LayerNormEps"><c>layer_norm_eps</c>.</param>
public sealed record ClipTextConfig(
    long VocabSize = 49408,
    long HiddenSize = 512,
    long IntermediateSize = 2048,
    long NumHiddenLayers = 12,
    long NumAttentionHeads = 8,
    long MaxPositionEmbeddings = 77,
    string HiddenAct = "quick_gelu",
    double LayerNormEps = 1e-5)
{
    /// <summary>The text tower of openai/clip-vit-large-patch14 (TRELLIS-text's condition model).</summary>
    public static ClipTextConfig ClipVitLargePatch14 { get; } = new(HiddenSize: 768, IntermediateSize: 3072, NumAttentionHeads: 12);

    /// <summary>Checks every value at once.</summary>
    /// <exception cref="ArgumentException">Every invalid value, in one message.</exception>
    public void Validate(string source = "the CLIP text config")
    {
        var errors = new List<string>();
        void Range(string key, long v, long lo, long hi) { if (v < lo || v > hi) errors.Add($"'{key}' must be in [{lo}, {hi}], found {v}"); }
        Range("vocab_size", VocabSize, 2, 10_000_000);
        Range("hidden_size", HiddenSize, 1, 65_536);
        Range("intermediate_size", IntermediateSize, 1, 1_048_576);
        Range("num_hidden_layers", NumHiddenLayers, 0, 1024);
        Range("num_attention_heads", NumAttentionHeads, 1, 4096);
        Range("max_position_embeddings", MaxPositionEmbeddings, 2, 1_048_576);
        if (NumAttentionHeads >= 1 && HiddenSize % NumAttentionHeads != 0)
            errors.Add($"'hidden_size' ({HiddenSize}) must be a multiple of 'num_attention_heads' ({NumAttentionHeads})");
        if (HiddenAct is not ("quick_gelu" or "gelu"))
            errors.Add($"'hidden_act' must be \"quick_gelu\" or \"gelu\", found \"{HiddenAct}\"");
        if (!(LayerNormEps > 0 && LayerNormEps < 1)) errors.Add($"'layer_norm_eps' must be in (0, 1), found {LayerNormEps}");
        if (errors.Count > 0) throw new ArgumentException($"{source}: {string.Join("; ", errors)}.");
    }

    /// <summary>
    /// Reads a transformers config: a <c>CLIPTextConfig</c> object, or a full <c>CLIPConfig</c> whose <c>text_config</c>
    /// holds it. Absent keys take transformers' defaults; keys this model does not use are ignored.
    /// </summary>
    /// <exception cref="InvalidDataException">A value of the wrong JSON type or out of range; the message names the file and key.</exception>
    public static ClipTextConfig FromJson(JsonNode json, string source)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (json is not JsonObject root) throw new InvalidDataException($"{source}: the config must be a JSON object.");
        var obj = root;
        if (root.TryGetPropertyValue("text_config", out var tc))
            obj = tc as JsonObject ?? throw new InvalidDataException($"{source}: 'text_config' must be a JSON object, found {tc?.GetValueKind().ToString() ?? "null"}.");
        var errors = new List<string>();
        long L(string key, long dflt)
        {
            if (!obj.TryGetPropertyValue(key, out var n)) return dflt;
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && long.TryParse(v.ToJsonString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var x)) return x;
            errors.Add($"'{key}' must be an integer, found {n?.ToJsonString() ?? "null"}");
            return dflt;
        }
        double D(string key, double dflt)
        {
            if (!obj.TryGetPropertyValue(key, out var n)) return dflt;
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && double.TryParse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var x)) return x;
            errors.Add($"'{key}' must be a number, found {n?.ToJsonString() ?? "null"}");
            return dflt;
        }
        string S(string key, string dflt)
        {
            if (!obj.TryGetPropertyValue(key, out var n)) return dflt;
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.String) return v.GetValue<string>();
            errors.Add($"'{key}' must be a string, found {n?.ToJsonString() ?? "null"}");
            return dflt;
        }
        var d = new ClipTextConfig();
        var c = new ClipTextConfig(L("vocab_size", d.VocabSize), L("hidden_size", d.HiddenSize), L("intermediate_size", d.IntermediateSize),
            L("num_hidden_layers", d.NumHiddenLayers), L("num_attention_heads", d.NumAttentionHeads),
            L("max_position_embeddings", d.MaxPositionEmbeddings), S("hidden_act", d.HiddenAct), D("layer_norm_eps", d.LayerNormEps));
        if (errors.Count > 0) throw new InvalidDataException($"{source}: {string.Join("; ", errors)}.");
        try { c.Validate(source); }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
        return c;
    }

    /// <summary>Reads <c>config.json</c> (see <see cref="FromJson"/>).</summary>
    /// <exception cref="FileNotFoundException">The file is missing.</exception>
    /// <exception cref="InvalidDataException">The file is malformed; the message names it and the key.</exception>
    public static ClipTextConfig FromFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"CLIP text model: the config '{path}' does not exist.", path);
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"'{path}' is not valid JSON: {e.Message}", e); }
        return FromJson(node ?? throw new InvalidDataException($"'{path}' holds null."), $"'{path}'");
    }

    /// <summary>The config as transformers writes it (<c>CLIPTextConfig</c> keys).</summary>
    public JsonObject ToJson() => new()
    {
        ["model_type"] = "clip_text_model",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["intermediate_size"] = IntermediateSize,
        ["num_hidden_layers"] = NumHiddenLayers,
        ["num_attention_heads"] = NumAttentionHeads,
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["hidden_act"] = HiddenAct,
        ["layer_norm_eps"] = LayerNormEps,
    };
}

/// <summary>
/// CLIP's text encoder up to <c>last_hidden_state</c>, as TRELLIS-text runs it (<c>CLIPTextModel(input_ids)</c>):
/// token + position embedding, pre-norm causal transformer layers (q/k/v/out projections with bias, an MLP with
/// quick-GELU), final layer norm. Parameter names are transformers' (<c>text_model.embeddings.token_embedding.weight</c>,
/// <c>text_model.encoder.layers.0.self_attn.q_proj.weight</c>, ..., <c>text_model.final_layer_norm.bias</c>), so the
/// released <c>model.safetensors</c> of openai/clip-vit-large-patch14 loads 1:1 (its vision tower is ignored).
/// </summary>
/// <remarks>
/// Given <c>input_ids</c> int64 <c>[B, T]</c> with T ≤ <c>max_position_embeddings</c>, returns <c>[B, T, hidden]</c> in the
/// parameter dtype. No padding mask: padded positions attend causally like any other, as in transformers when only
/// <c>input_ids</c> are given (TRELLIS-text feeds all 77 states to its flows). Layer norms compute in at least float32
/// (float64 stays float64).
/// </remarks>
public sealed class ClipTextModel : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly ClipTextTransformer text_model;
#pragma warning restore IDE1006

    /// <summary>Builds the network with fresh weights (load real ones with <see cref="LoadWeights"/> or <see cref="FromFolder"/>).</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="dtype">Parameter dtype (float32 default; float64 for exact runs; float16/bfloat16).</param>
    /// <param name="device">Device (CPU by default).</param>
    /// <exception cref="ArgumentException">Invalid config or dtype.</exception>
    public ClipTextModel(ClipTextConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(ClipTextModel))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
        Config = config;
        text_model = new ClipTextTransformer(config, dtype, device);
        RegisterComponents();
    }

    /// <summary>The architecture.</summary>
    public ClipTextConfig Config { get; }

    /// <summary>The parameter dtype.</summary>
    public ScalarType DType => parameters().First().dtype;

    /// <summary>The parameter device.</summary>
    public Device Device => parameters().First().device;

    /// <summary>Selects the attention kernel (default <see cref="AttentionBackend.Auto"/>).</summary>
    public AttentionBackend AttentionBackend { get => text_model.Backend; set => text_model.Backend = value; }

    /// <summary><c>last_hidden_state</c> <c>[B, T, hidden]</c> of <paramref name="inputIds"/> (int64 <c>[B, T]</c>).</summary>
    /// <exception cref="ArgumentException">Ids of the wrong shape or dtype, longer than the context, or outside the vocabulary.</exception>
    public override Tensor forward(Tensor inputIds)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.dim() != 2 || inputIds.shape[1] < 1 || inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"input_ids must be [B, T] with 1 <= T <= {Config.MaxPositionEmbeddings}, found [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (inputIds.dtype is not (ScalarType.Int64 or ScalarType.Int32))
            throw new ArgumentException($"input_ids must be int64 (or int32), found {inputIds.dtype}.", nameof(inputIds));
        if (inputIds.numel() > 0)
        {
            long lo = inputIds.min().item<long>(), hi = inputIds.max().item<long>();
            if (lo < 0 || hi >= Config.VocabSize)
                throw new ArgumentException($"input_ids must lie in [0, {Config.VocabSize}), found [{lo}, {hi}].", nameof(inputIds));
        }
        return text_model.forward(inputIds.to(ScalarType.Int64).to(Device));
    }

    /// <summary>
    /// Loads the text tower's weights (every <c>text_model.*</c> tensor; other entries, such as the vision tower and the
    /// projections of a full CLIP checkpoint, are left out) from a <c>.safetensors</c> file, strictly: every missing,
    /// unexpected or mis-shaped <c>text_model.*</c> tensor is reported at once.
    /// </summary>
    /// <exception cref="StateDictMismatchException">Missing, unexpected or mis-shaped tensors.</exception>
    public void LoadWeights(string safetensorsPath)
    {
        var all = SafeTensors.Load(safetensorsPath);
        try
        {
            var text = all.Where(kv => kv.Key.StartsWith("text_model.", StringComparison.Ordinal)
                                       && kv.Key != "text_model.embeddings.position_ids") // a non-persistent buffer older transformers saved
                          .ToDictionary(kv => kv.Key, kv => kv.Value);
            TrellisCheckpoint.LoadStateDict(this, text, strict: true, source: safetensorsPath);
        }
        finally
        {
            foreach (var t in all.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Loads a CLIP model folder as transformers saves it (<c>config.json</c> — a <c>CLIPConfig</c> or a
    /// <c>CLIPTextConfig</c> — and <c>model.safetensors</c>), e.g. a local copy of openai/clip-vit-large-patch14.
    /// A <c>text_encoder/</c> sub-folder is used when the files are there instead.
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing; the message names it.</exception>
    /// <exception cref="InvalidDataException">A malformed config.</exception>
    /// <exception cref="StateDictMismatchException">The weights do not fit the config.</exception>
    public static ClipTextModel FromFolder(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var dir = folder;
        if (!File.Exists(Path.Combine(dir, "config.json")) && File.Exists(Path.Combine(dir, "text_encoder", "config.json")))
            dir = Path.Combine(dir, "text_encoder");
        var config = ClipTextConfig.FromFile(Path.Combine(dir, "config.json"));
        var weights = Path.Combine(dir, "model.safetensors");
        if (!File.Exists(weights))
            throw new FileNotFoundException($"CLIP text model: '{weights}' does not exist (the weights as transformers saves them; convert a pytorch_model.bin to safetensors first).", weights);
        var model = new ClipTextModel(config, dtype, device);
        try
        {
            model.LoadWeights(weights);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }

    /// <summary>Saves the text tower as transformers' layout (<c>config.json</c> + <c>model.safetensors</c>), atomically per file.</summary>
    public void SaveFolder(string folder)
    {
        Directory.CreateDirectory(folder);
        var sd = state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
        SafeTensors.Save(Path.Combine(folder, "model.safetensors"), sd);
        var json = Config.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true });
        AtomicFile.Write(Path.Combine(folder, "config.json"), s => { using var w = new StreamWriter(s, new UTF8Encoding(false), leaveOpen: true); w.Write(json); });
    }
}

/// <summary>transformers' <c>CLIPTextTransformer</c> (embeddings, encoder, final layer norm).</summary>
internal sealed class ClipTextTransformer : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ClipTextEmbeddings embeddings;
    private readonly ClipEncoder encoder;
    private readonly LayerNorm32 final_layer_norm;
#pragma warning restore IDE1006

    public ClipTextTransformer(ClipTextConfig c, ScalarType dtype, Device? device) : base(nameof(ClipTextTransformer))
    {
        embeddings = new ClipTextEmbeddings(c, dtype, device);
        encoder = new ClipEncoder(c, dtype, device);
        final_layer_norm = new LayerNorm32(c.HiddenSize, elementwiseAffine: true, c.LayerNormEps, dtype, device);
        RegisterComponents();
    }

    public AttentionBackend Backend { get => encoder.Backend; set => encoder.Backend = value; }

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var h = encoder.forward(embeddings.forward(ids));
        return final_layer_norm.forward(h).MoveToOuterDisposeScope();
    }
}

internal sealed class ClipTextEmbeddings : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Embedding token_embedding;
    private readonly Embedding position_embedding;
#pragma warning restore IDE1006

    public ClipTextEmbeddings(ClipTextConfig c, ScalarType dtype, Device? device) : base(nameof(ClipTextEmbeddings))
    {
        token_embedding = nn.Embedding(c.VocabSize, c.HiddenSize, device: device, dtype: dtype);
        position_embedding = nn.Embedding(c.MaxPositionEmbeddings, c.HiddenSize, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var pos = torch.arange(ids.shape[1], dtype: ScalarType.Int64, device: ids.device);
        return (token_embedding.forward(ids) + position_embedding.forward(pos).unsqueeze(0)).MoveToOuterDisposeScope();
    }
}

internal sealed class ClipEncoder : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ModuleList<ClipEncoderLayer> layers;
#pragma warning restore IDE1006

    public ClipEncoder(ClipTextConfig c, ScalarType dtype, Device? device) : base(nameof(ClipEncoder))
    {
        layers = new ModuleList<ClipEncoderLayer>();
        for (long i = 0; i < c.NumHiddenLayers; i++) layers.Add(new ClipEncoderLayer(c, dtype, device));
        RegisterComponents();
    }

    private AttentionBackend _backend = AttentionBackend.Auto;

    public AttentionBackend Backend
    {
        get => _backend;
        set { _backend = value; foreach (var l in layers) l.Backend = value; }
    }

    public override Tensor forward(Tensor h)
    {
        if (layers.Count == 0) return h.alias();
        using var scope = torch.NewDisposeScope();
        var x = h;
        foreach (var layer in layers) x = layer.forward(x);
        return x.MoveToOuterDisposeScope();
    }
}

internal sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ClipAttention self_attn;
    private readonly LayerNorm32 layer_norm1;
    private readonly Fc1Fc2Mlp mlp;
    private readonly LayerNorm32 layer_norm2;
#pragma warning restore IDE1006

    public ClipEncoderLayer(ClipTextConfig c, ScalarType dtype, Device? device) : base(nameof(ClipEncoderLayer))
    {
        self_attn = new ClipAttention(c, dtype, device);
        layer_norm1 = new LayerNorm32(c.HiddenSize, elementwiseAffine: true, c.LayerNormEps, dtype, device);
        mlp = new Fc1Fc2Mlp(c.HiddenSize, c.IntermediateSize, quickGelu: c.HiddenAct == "quick_gelu", dtype, device);
        layer_norm2 = new LayerNorm32(c.HiddenSize, elementwiseAffine: true, c.LayerNormEps, dtype, device);
        RegisterComponents();
    }

    public AttentionBackend Backend { get => self_attn.Backend; set => self_attn.Backend = value; }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + self_attn.forward(layer_norm1.forward(x));
        h = h + mlp.forward(layer_norm2.forward(h));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>Causal multi-head self-attention with separate q/k/v/out projections (transformers' <c>CLIPAttention</c>).</summary>
internal sealed class ClipAttention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear q_proj;
    private readonly Linear k_proj;
    private readonly Linear v_proj;
    private readonly Linear out_proj;
#pragma warning restore IDE1006
    private readonly long _heads;

    public ClipAttention(ClipTextConfig c, ScalarType dtype, Device? device) : base(nameof(ClipAttention))
    {
        q_proj = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        k_proj = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        v_proj = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        out_proj = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        _heads = c.NumAttentionHeads;
        RegisterComponents();
    }

    public AttentionBackend Backend { get; set; } = AttentionBackend.Auto;

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1], c = x.shape[2];
        var q = q_proj.forward(x).view(b, t, _heads, c / _heads);
        var k = k_proj.forward(x).view(b, t, _heads, c / _heads);
        var v = v_proj.forward(x).view(b, t, _heads, c / _heads);
        var o = DenseAttention.Compute(q, k, v, Backend, causal: true).reshape(b, t, c);
        return out_proj.forward(o).MoveToOuterDisposeScope();
    }
}
