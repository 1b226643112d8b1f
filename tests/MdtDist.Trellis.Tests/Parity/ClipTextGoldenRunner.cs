using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// clip_text: CLIP's text tower to last_hidden_state. The manifest's config uses OpenAI's argument names (width, layers,
/// heads, context_length, vocab_size; the MLP is 4 × width, as in OpenAI's module); they map 1:1 onto transformers'
/// CLIPTextConfig, which is what the library reads from a model folder.
/// </summary>
public sealed class ClipTextGoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "clip_text";

    public void Run(GoldenCase c)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var args = c.Config.GetProperty("args");
        long width = args.GetProperty("width").GetInt64();
        var arch = c.Settings.TryGetProperty("architecture", out var a) ? a : default;
        var hf = new JsonObject
        {
            ["vocab_size"] = args.GetProperty("vocab_size").GetInt64(),
            ["hidden_size"] = width,
            ["intermediate_size"] = 4 * width,
            ["num_hidden_layers"] = args.GetProperty("layers").GetInt64(),
            ["num_attention_heads"] = args.GetProperty("heads").GetInt64(),
            ["max_position_embeddings"] = args.GetProperty("context_length").GetInt64(),
            ["hidden_act"] = "quick_gelu",
        };
        if (arch.ValueKind == System.Text.Json.JsonValueKind.Object && arch.TryGetProperty("layer_norm_eps", out var eps))
            hf["layer_norm_eps"] = eps.GetDouble();
        var config = ClipTextConfig.FromJson(hf, $"golden case {c.Name}");
        using var model = new ClipTextModel(config, ScalarType.Float64);
        TrellisCheckpoint.LoadStateDict(model, c.WithPrefix("model."), strict: true, source: $"golden case {c.Name}");
        model.eval();
        foreach (var backend in new[] { AttentionBackend.Math, AttentionBackend.Sdpa })
        {
            model.AttentionBackend = backend;
            var h = model.forward(c["in.input_ids"]);
            GoldenReport.Output(c, "out.last_hidden_state", h);
        }
    }
}
