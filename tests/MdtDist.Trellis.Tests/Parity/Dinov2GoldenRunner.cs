using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>
/// The <c>dinov2</c> family: the torch.hub architecture named by <c>config.name</c> with <c>config.args.img_size</c> and
/// the <c>reference_patches</c> overrides, loaded from the case's <c>model.*</c> tensors, run on <c>in.image</c>.
/// Compares every <c>out.*</c> the case lists (x_prenorm, TRELLIS's cond, the interpolated pos_embed, the normed tokens).
/// </summary>
public sealed class Dinov2GoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Family == "dinov2";

    /// <summary>The architecture a dinov2 case describes.</summary>
    public static Dinov2Config ConfigOf(GoldenCase c)
    {
        var args = c.Config.GetProperty("args");
        long img = args.TryGetProperty("img_size", out var s) ? s.GetInt64() : 518;
        var cfg = Dinov2Config.FromHubName(c.ConfigName, img);
        if (c.Root.TryGetProperty("reference_patches", out var rp) && rp.TryGetProperty("DinoVisionTransformer", out var p))
        {
            if (p.TryGetProperty("embed_dim", out var e)) cfg = cfg with { EmbedDim = e.GetInt64() };
            if (p.TryGetProperty("depth", out var d)) cfg = cfg with { Depth = d.GetInt64() };
            if (p.TryGetProperty("num_heads", out var h)) cfg = cfg with { NumHeads = h.GetInt64() };
        }
        return cfg;
    }

    public void Run(GoldenCase c)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        using var model = new Dinov2Model(ConfigOf(c), ScalarType.Float64);
        TrellisCheckpoint.LoadStateDict(model, c.WithPrefix("model."), strict: true, source: $"golden case {c.Name}");
        model.eval();
        var image = c["in.image"];
        if (c.Has("in.image_rgb"))
        {
            // in.image is in.image_rgb normalised with ImageNet's mean/std: check our normalisation reproduces it.
            GoldenReport.Close(c, "in.image (normalised from in.image_rgb)", image, ImageNet.Normalize(c["in.image_rgb"]), 1e-12);
        }
        var outputs = c.Role("outputs");
        using var f = model.ForwardFeatures(image);
        foreach (var name in outputs)
        {
            Tensor actual = name switch
            {
                "out.x_prenorm" => f.XPrenorm,
                "out.cond" => model.forward(image),
                "out.pos_embed" => model.PositionEmbedding(image.shape[2], image.shape[3]),
                "out.x_norm_clstoken" => f.XNormClsToken,
                "out.x_norm_regtokens" => f.XNormRegTokens,
                "out.x_norm_patchtokens" => f.XNormPatchTokens,
                _ => throw new Xunit.Sdk.XunitException($"{c.Name}: output '{name}' is not known to {nameof(Dinov2GoldenRunner)}"),
            };
            GoldenReport.Output(c, name, actual);
        }
    }
}
