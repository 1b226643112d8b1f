using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>
/// TRELLIS-text end to end with tiny random networks, laid out as the released folders are: a TRELLIS-text folder whose
/// pipeline.json names its own flows and TRELLIS-image-large's decoders (JeffreyXiang/TRELLIS-image-large/ckpts/…), the
/// image folder beside it, and the CLIP folder (openai/clip-vit-large-patch14) beside both.
/// </summary>
public class TrellisTextPipelineTests
{
    private static readonly string TokenizerFolder = Path.Combine(AppContext.BaseDirectory, "TestData", "clip_tokenizer");

    internal static string WriteTextLayout(out ClipTextModel clip)
    {
        var parent = Directory.CreateTempSubdirectory("mdtdist-text-").FullName;
        var image = Path.Combine(parent, "TRELLIS-image-large");
        var text = Path.Combine(parent, "TRELLIS-text-tiny");
        var clipDir = Path.Combine(parent, "clip-vit-large-patch14");
        var p = TinyPipeline.Create();
        var imageFolder = TinyPipeline.WriteFolder(p);
        Directory.Move(imageFolder, image);
        Directory.CreateDirectory(Path.Combine(text, "ckpts"));
        foreach (var k in new[] { "ss_flow", "slat_flow" })
            foreach (var ext in new[] { ".json", ".safetensors" })
                File.Move(Path.Combine(image, "ckpts", k + ext), Path.Combine(text, "ckpts", k + ext));
        var pipeline = JsonNode.Parse(File.ReadAllText(Path.Combine(image, "pipeline.json")))!.AsObject();
        pipeline["name"] = "TrellisTextTo3DPipeline";
        var args = pipeline["args"]!.AsObject();
        args.Remove("image_cond_model");
        args["text_cond_model"] = ClipTextConditioner.TrellisTextModel;
        args["models"] = new JsonObject
        {
            ["sparse_structure_decoder"] = "JeffreyXiang/TRELLIS-image-large/ckpts/ss_dec",
            ["sparse_structure_flow_model"] = "ckpts/ss_flow",
            ["slat_decoder_gs"] = "JeffreyXiang/TRELLIS-image-large/ckpts/slat_dec_gs",
            ["slat_flow_model"] = "ckpts/slat_flow",
        };
        // TRELLIS-text's own sampler parameters: 25 steps, CFG 7.5 on [0.5, 0.95].
        foreach (var s in new[] { "sparse_structure_sampler", "slat_sampler" })
            args[s] = JsonNode.Parse("""{"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05}, "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 0.95], "rescale_t": 3.0}}""");
        File.WriteAllText(Path.Combine(text, "pipeline.json"), pipeline.ToJsonString());

        // A tiny CLIP with the real vocabulary (so the real tokenizer's ids fit) and the flows' condition width.
        clip = TinyPipeline.Randomize(new ClipTextModel(new ClipTextConfig(VocabSize: 49408, HiddenSize: 16, IntermediateSize: 32,
            NumHiddenLayers: 1, NumAttentionHeads: 2)), 11);
        clip.SaveFolder(clipDir);
        File.Copy(Path.Combine(TokenizerFolder, "vocab.json"), Path.Combine(clipDir, "vocab.json"));
        File.Copy(Path.Combine(TokenizerFolder, "merges.txt"), Path.Combine(clipDir, "merges.txt"));
        return text;
    }

    [Fact]
    public void RunsFromAPromptWithTheEmptyPromptAsNegative()
    {
        var text = WriteTextLayout(out var clip);
        try
        {
            var pipeline = TrellisPipeline.FromFolder(text);
            Assert.Equal(7.5, pipeline.StructureSampler.CfgStrength);
            Assert.Equal(25, pipeline.StructureSampler.Steps);
            Assert.Equal(0.95, pipeline.LatentSampler.CfgIntervalEnd);
            using var conditioner = ClipTextConditioner.FromPipelineFolder(text);
            var prompts = new[] { "a red chair" };

            using var scope = torch.NewDisposeScope();
            var condition = conditioner.Encode(prompts);
            var empty = conditioner.EncodeTokens(new[] { "" });
            Assert.Equal(new long[] { 1, 77, 16 }, condition.Cond.shape);
            Assert.Equal(0f, (condition.NegCond - empty).abs().max().item<float>());
            Assert.True(condition.NegCond.abs().max().item<float>() > 0.1f, "the negative must be the empty prompt's encoding, not zeros");
            // The loaded model is the saved one: same tokens.
            using (torch.no_grad())
                Assert.Equal(0f, (clip.forward(conditioner.Tokenizer.EncodeBatch(prompts)) - condition.Cond).abs().max().item<float>());

            // TRELLIS-text's guidance (7.5 on [0.5, 0.95]) at 4 steps keeps the test fast.
            var sampler = pipeline.StructureSampler with { Steps = 4 };
            var options = new TrellisRunOptions { Seed = 3, NumSamples = 2, StructureSampler = sampler, LatentSampler = pipeline.LatentSampler with { Steps = 4 } };
            using var viaConditioner = pipeline.Run(conditioner, prompts, options);
            using var explicitNeg = pipeline.Run(new TrellisCondition(conditioner.EncodeTokens(prompts), empty), options);
            using var zerosNeg = pipeline.Run(TrellisCondition.FromImageFeatures(conditioner.EncodeTokens(prompts)), options);
            Assert.Equal(0f, (viaConditioner.StructureLatent - explicitNeg.StructureLatent).abs().max().item<float>());
            // With CFG 7.5 the negative matters: zeros instead of the empty prompt give another structure latent.
            Assert.True((viaConditioner.StructureLatent - zerosNeg.StructureLatent).abs().max().item<float>() > 1e-3f);
            Assert.Equal(2, viaConditioner.Samples.Count);
            Assert.All(viaConditioner.Samples.Where(s => !s.IsEmpty), s => Assert.NotNull(s.Gaussians));
            // 4 steps of TRELLIS's grid (rescale_t 3): t = 1, 0.9, 0.75, 0.5 → guided at 0.9, 0.75, 0.5 → 4 + 3 evaluations.
            Assert.Equal(7, viaConditioner.StructureEvaluations);
        }
        finally
        {
            clip.Dispose();
            Directory.Delete(Path.GetDirectoryName(text)!, true);
        }
    }

    [Fact]
    public void MissingTextModelNamesThePlacesTried()
    {
        var text = WriteTextLayout(out var clip);
        clip.Dispose();
        try
        {
            var clipDir = Path.Combine(Path.GetDirectoryName(text)!, "clip-vit-large-patch14");
            File.Delete(Path.Combine(clipDir, "merges.txt"));
            var e = Assert.Throws<FileNotFoundException>(() => ClipTextConditioner.FromPipelineFolder(text));
            Assert.Contains("merges.txt", e.Message);
            Directory.Delete(clipDir, true);
            e = Assert.Throws<FileNotFoundException>(() => ClipTextConditioner.FromPipelineFolder(text));
            Assert.Contains("openai/clip-vit-large-patch14", e.Message);
            Assert.Contains("clip-vit-large-patch14'", e.Message);
            File.WriteAllText(Path.Combine(text, "pipeline.json"), """{"args": {"models": {}}}""");
            Assert.Contains("text_cond_model", Assert.Throws<InvalidDataException>(() => ClipTextConditioner.FromPipelineFolder(text)).Message);
        }
        finally { Directory.Delete(Path.GetDirectoryName(text)!, true); }
    }
}
