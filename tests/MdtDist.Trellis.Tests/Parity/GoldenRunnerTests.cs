using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// The golden runners follow the manifest and the tensor file, not the shape of the shipped cases: tests on edited
/// copies of shipped cases (an input removed, a config flag flipped with the reference outputs it implies, an extra
/// output added, a tensor the runner cannot account for).
/// </summary>
public sealed class GoldenRunnerTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mdtdist-golden-edit-");

    public void Dispose() => _dir.Delete(recursive: true);

    /// <summary>Copies the shipped case <paramref name="name"/> with edits of its manifest and tensors; returns the new manifest path.</summary>
    private string Edited(string name, Action<JsonObject>? manifest = null, Action<Dictionary<string, Tensor>>? tensors = null)
    {
        var src = GoldenParityTests.BundledDirectory;
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(src, name + ".json")))!.AsObject();
        var t = SafeTensors.Load(Path.Combine(src, name + ".safetensors"));
        manifest?.Invoke(root);
        tensors?.Invoke(t);
        root["tensor_file"] = name + ".safetensors";
        SafeTensors.Save(Path.Combine(_dir.FullName, name + ".safetensors"), t);
        var path = Path.Combine(_dir.FullName, name + ".json");
        File.WriteAllText(path, root.ToJsonString());
        foreach (var v in t.Values) v.Dispose();
        return path;
    }

    /// <summary>Removes <paramref name="names"/> from every tensor list of the manifest.</summary>
    private static void Unlist(JsonObject root, params string[] names)
    {
        foreach (var (_, list) in root["tensors"]!.AsObject())
            if (list is JsonArray a)
                foreach (var item in a.Where(i => names.Contains(i!.GetValue<string>())).ToList()) a.Remove(item);
    }

    private static void List(JsonObject root, string role, string name) => root["tensors"]![role]!.AsArray().Add(name);

    private static string Fails(string manifest) =>
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => GoldenParityTests.RunCase(manifest)).Message;

    [Fact]
    public void AShippedCaseCopiedUnchangedPasses() => GoldenParityTests.RunCase(Edited("ss_dec"));

    [Fact]
    public void AnExtraOutputFailsTheCase()
    {
        var path = Edited("ss_dec", m => List(m, "outputs", "out.logits_squared"),
            t => t["out.logits_squared"] = t["out.logits"] * t["out.logits"]);
        Assert.Contains("out.logits_squared", Fails(path));
    }

    [Fact]
    public void ATensorTheRunnerDoesNotUseFailsTheCase()
    {
        var path = Edited("ss_dec", m => List(m, "inputs", "in.mask"), t => t["in.mask"] = torch.ones(3));
        Assert.Contains("cannot account for: in.mask", Fails(path));
    }

    [Fact]
    public void AManifestListingATensorTheFileLacksFailsTheCase()
    {
        var path = Edited("ss_dec", m => List(m, "outputs", "out.nowhere"));
        Assert.Contains("out.nowhere", Fails(path));
    }

    [Fact]
    public void ARequiredInputRemovedFailsWithItsName()
    {
        var path = Edited("ss_dec", m => Unlist(m, "in.z"), t => t.Remove("in.z"));
        Assert.Contains("no tensor 'in.z'", Fails(path));
    }

    [Fact]
    public void AnOptionalInputRemovedStaysOptional()
    {
        // in.neg_cond is zeros_like(cond), TRELLIS's image convention: without it the sampler runner uses that default.
        GoldenParityTests.RunCase(Edited("sampler_cfg", m => Unlist(m, "in.neg_cond"), t => t.Remove("in.neg_cond")));
    }

    [Fact]
    public void AGivenNonZeroNegativeConditionIsUsed()
    {
        // The same case with a different in.neg_cond no longer matches its outputs: the runner really passes it on.
        var path = Edited("sampler_cfg", tensors: t => t["in.neg_cond"] = t["in.neg_cond"] + 0.5);
        Assert.Contains("relative error", Fails(path));
    }

    [Fact]
    public void AMeshDecoderWithoutColourRunsWithoutColourOutputs()
    {
        // use_color = false drops the 48 colour channels at the end of out_layer (53 instead of 101); everything else is
        // the same network, so the reference outputs are the shipped ones without colours: feats[:, :53], v_attrs[:, :4].
        var path = Edited("slat_dec_mesh",
            m =>
            {
                m["config"]!["args"]!["representation_config"]!["use_color"] = false;
                m["settings"]!["mesh_extractor"]!["use_color"] = false;
                m["settings"]!["mesh_extractor"]!["channels"] = 53;
                Unlist(m, "out.0.fc_colors_at_v_pos", "out.1.fc_colors_at_v_pos");
            },
            t =>
            {
                t["model.out_layer.weight"] = t["model.out_layer.weight"][..53].clone();
                t["model.out_layer.bias"] = t["model.out_layer.bias"][..53].clone();
                t["out.feats"] = t["out.feats"][.., ..53].clone();
                foreach (var b in new[] { 0, 1 })
                {
                    t.Remove($"out.{b}.fc_colors_at_v_pos");
                    t[$"out.{b}.v_attrs"] = t[$"out.{b}.v_attrs"][.., ..4].clone();
                }
            });
        GoldenParityTests.RunCase(path);
    }

    [Fact]
    public void AMeshDecoderFlaggedWithoutColourButGivenColoursFails()
    {
        // The flag flipped alone: the weights no longer fit the network the config describes.
        var path = Edited("slat_dec_mesh", m => m["config"]!["args"]!["representation_config"]!["use_color"] = false);
        Assert.ThrowsAny<Exception>(() => GoldenParityTests.RunCase(path));
    }

    [Fact]
    public void AnObjectiveWithoutVelocityDistillationHasNoFakeNoise()
    {
        // λ_VD = 0 (VM only, the paper's ablation): no noise_fake draw and no VD outputs; VM is computed first from the
        // given draws, so its outputs are the shipped ones and the total loss is the VM loss. The gradients of the VM-only
        // loss are not in the file, so none are listed.
        var vd = new[] { "in.noise_fake", "out.loss_vd", "out.terms.loss_vd", "out.v_fake", "out.x_fake" };
        var path = Edited("mdt_losses_discrete_dnorm_nocfg",
            m =>
            {
                m["settings"]!["trainer_args"]!["lambda_vd"] = 0.0;
                var drop = m["tensors"]!.AsObject().Where(r => r.Value is JsonArray).SelectMany(r => r.Value!.AsArray())
                    .Select(n => n!.GetValue<string>()).Where(n => vd.Contains(n) || n.StartsWith("out.vd.") || n.StartsWith("grad.")).ToArray();
                Unlist(m, drop);
            },
            t =>
            {
                foreach (var k in t.Keys.Where(k => vd.Contains(k) || k.StartsWith("out.vd.") || k.StartsWith("grad.")).ToList()) t.Remove(k);
                t["out.loss"] = t["out.loss_vm"].clone();
                t["out.terms.loss"] = t["out.terms.loss_vm"].clone();
            });
        GoldenParityTests.RunCase(path);
    }

    [Fact]
    public void FakeNoiseWithoutAVelocityDistillationTermFails()
    {
        var path = Edited("mdt_losses_discrete_dnorm_nocfg", m => m["settings"]!["trainer_args"]!["lambda_vd"] = 0.0);
        Assert.Contains("in.noise_fake is present", Fails(path));
    }
}
