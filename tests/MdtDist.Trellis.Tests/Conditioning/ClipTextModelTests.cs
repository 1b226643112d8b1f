using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Conditioning;

public class ClipTextModelTests
{
    private static readonly ClipTextConfig Tiny = new(VocabSize: 64, HiddenSize: 16, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 4, MaxPositionEmbeddings: 12);

    private static ClipTextModel RandomTiny(long seed, ScalarType dtype = ScalarType.Float64)
    {
        var m = new ClipTextModel(Tiny, dtype);
        var g = new Generator((ulong)seed);
        using (torch.no_grad())
            foreach (var (_, p) in m.named_parameters()) p.copy_(torch.randn(p.shape, dtype: p.dtype, generator: g) * 0.3);
        m.eval();
        return m;
    }

    [Fact]
    public void StateDictNamesAreTransformers()
    {
        using var m = new ClipTextModel(Tiny);
        var names = m.state_dict().Keys.ToHashSet();
        Assert.Contains("text_model.embeddings.token_embedding.weight", names);
        Assert.Contains("text_model.embeddings.position_embedding.weight", names);
        Assert.Contains("text_model.encoder.layers.1.self_attn.q_proj.bias", names);
        Assert.Contains("text_model.encoder.layers.0.mlp.fc2.weight", names);
        Assert.Contains("text_model.final_layer_norm.weight", names);
        // per layer: 4 projections × 2 + 2 norms × 2 + 2 fc × 2 = 16; embeddings 2; final norm 2
        Assert.Equal(2 * 16 + 2 + 2, names.Count);
    }

    /// <summary>Causal attention: changing token j changes no state before position j and does change position j.</summary>
    [Fact]
    public void LaterTokensDoNotAffectEarlierStates()
    {
        using var m = RandomTiny(3);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = torch.tensor(new long[] { 62, 5, 9, 17, 33, 63, 63, 63 }, new long[] { 1, 8 });
        var edited = ids.clone();
        edited[0, 4] = 40;
        foreach (var backend in new[] { AttentionBackend.Math, AttentionBackend.Sdpa })
        {
            m.AttentionBackend = backend;
            var a = m.forward(ids);
            var b = m.forward(edited);
            Assert.Equal(new long[] { 1, 8, 16 }, a.shape);
            Assert.Equal(0.0, (a[.., ..4] - b[.., ..4]).abs().max().item<double>());
            Assert.True((a[.., 4] - b[.., 4]).abs().max().item<double>() > 1e-3);
        }
    }

    /// <summary>
    /// A folder as transformers saves a full CLIP model (config.json = CLIPConfig with text_config, model.safetensors with
    /// a vision tower and projections besides text_model.*) loads the text tower and gives the same states.
    /// </summary>
    [Fact]
    public void LoadsFullClipFolderIgnoringTheVisionTower()
    {
        using var m = RandomTiny(4);
        var dir = Directory.CreateTempSubdirectory("mdtdist-cliptext-").FullName;
        try
        {
            var sd = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
            using var vis = torch.ones(3, 3, dtype: ScalarType.Float64);
            using var proj = torch.ones(16, 8, dtype: ScalarType.Float64);
            sd["vision_model.embeddings.patch_embedding.weight"] = vis;
            sd["text_projection.weight"] = proj;
            SafeTensors.Save(Path.Combine(dir, "model.safetensors"), sd);
            var cfg = new JsonObject { ["architectures"] = new JsonArray("CLIPModel"), ["text_config"] = Tiny.ToJson(), ["vision_config"] = new JsonObject { ["hidden_size"] = 1024 } };
            File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
            using var loaded = ClipTextModel.FromFolder(dir, ScalarType.Float64);
            Assert.Equal(Tiny, loaded.Config);
            using var noGrad = torch.no_grad();
            using var ids = torch.tensor(new long[] { 62, 1, 2, 63 }, new long[] { 1, 4 });
            using var a = m.forward(ids);
            using var b = loaded.forward(ids);
            Assert.Equal(0.0, (a - b).abs().max().item<double>());

            // A missing text tensor is reported by name.
            sd.Remove("text_model.final_layer_norm.bias");
            SafeTensors.Save(Path.Combine(dir, "model.safetensors"), sd);
            var e = Assert.Throws<StateDictMismatchException>(() => ClipTextModel.FromFolder(dir, ScalarType.Float64));
            Assert.Contains("text_model.final_layer_norm.bias", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void SaveFolderRoundTrips()
    {
        using var m = RandomTiny(5, ScalarType.Float32);
        var dir = Directory.CreateTempSubdirectory("mdtdist-cliptext-").FullName;
        try
        {
            m.SaveFolder(dir);
            using var loaded = ClipTextModel.FromFolder(dir);
            using var noGrad = torch.no_grad();
            using var ids = torch.tensor(new long[] { 62, 7, 63 }, new long[] { 1, 3 });
            using var a = m.forward(ids);
            using var b = loaded.forward(ids);
            Assert.Equal(0f, (a - b).abs().max().item<float>());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void BadConfigsAndInputsAreNamed()
    {
        var e = Assert.Throws<InvalidDataException>(() => ClipTextConfig.FromJson(new JsonObject { ["hidden_size"] = "768" }, "'cfg.json'"));
        Assert.Contains("'hidden_size' must be an integer", e.Message);
        Assert.Contains("cfg.json", e.Message);
        e = Assert.Throws<InvalidDataException>(() => ClipTextConfig.FromJson(new JsonObject { ["hidden_size"] = 10, ["num_attention_heads"] = 3, ["hidden_act"] = "relu" }, "x"));
        Assert.Contains("multiple of 'num_attention_heads'", e.Message);
        Assert.Contains("'hidden_act'", e.Message);
        e = Assert.Throws<InvalidDataException>(() => ClipTextConfig.FromJson(new JsonObject { ["text_config"] = new JsonArray() }, "x"));
        Assert.Contains("'text_config' must be a JSON object", e.Message);
        Assert.Throws<FileNotFoundException>(() => ClipTextModel.FromFolder(Path.Combine(Path.GetTempPath(), "no-such-clip-folder")));

        using var m = new ClipTextModel(Tiny);
        using var tooLong = torch.zeros(1, 13, dtype: ScalarType.Int64);
        Assert.Contains("1 <= T <= 12", Assert.Throws<ArgumentException>(() => m.forward(tooLong)).Message);
        using var outside = torch.full(1, 3, 64L, dtype: ScalarType.Int64);
        Assert.Contains("[0, 64)", Assert.Throws<ArgumentException>(() => m.forward(outside)).Message);
        using var floats = torch.zeros(1, 3);
        Assert.Contains("int64", Assert.Throws<ArgumentException>(() => m.forward(floats)).Message);
    }
}
