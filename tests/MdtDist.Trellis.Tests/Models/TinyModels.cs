using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

/// <summary>Small float64 stage-1 networks with random (non-zero) weights for fast tests.</summary>
internal static class TinyModels
{
    public static SparseStructureFlowConfig FlowConfig(long patch = 1, bool shareMod = false, bool qkRmsCross = false, long outChannels = 2) => new()
    {
        Resolution = 4, InChannels = 3, OutChannels = outChannels, ModelChannels = 24, CondChannels = 10, NumBlocks = 2,
        NumHeads = 3, MlpRatio = 2.5, PatchSize = patch, QkRmsNorm = true, QkRmsNormCross = qkRmsCross, ShareMod = shareMod,
    };

    public static SparseStructureDecoderConfig DecoderConfig => new()
    {
        OutChannels = 1, LatentChannels = 3, NumResBlocks = 1, NumResBlocksMiddle = 1, Channels = new long[] { 8, 4 },
    };

    public static SparseStructureEncoderConfig EncoderConfig => new()
    {
        InChannels = 1, LatentChannels = 3, NumResBlocks = 1, NumResBlocksMiddle = 1, Channels = new long[] { 4, 8 },
    };

    /// <summary>Overwrites every parameter with seeded N(0, 0.3²) + 1 for norm weights, so that no layer is trivially zero.</summary>
    public static T Randomize<T>(T model, long seed) where T : nn.Module
    {
        var g = new Generator((ulong)seed);
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            using var r = torch.randn(p.shape, dtype: ScalarType.Float64, generator: g) * 0.3;
            using var v = name.EndsWith("gamma") || name.EndsWith("norm1.weight") || name.EndsWith("norm2.weight") || name.EndsWith("0.weight") && p.dim() == 1 ? r + 1 : r.alias();
            p.copy_(v);
        }
        return model;
    }

    public static SparseStructureFlowModel Flow(long seed = 1, long patch = 1, bool shareMod = false, bool qkRmsCross = false, ScalarType dtype = ScalarType.Float64, long outChannels = 2) =>
        Randomize(new SparseStructureFlowModel(FlowConfig(patch, shareMod, qkRmsCross, outChannels), dtype), seed);

    /// <summary>A tiny flow whose velocity has the latent's shape (in = out channels), as an <c>IFlowModel</c> needs.</summary>
    public static SparseStructureFlowModel VelocityFlow(long seed = 1, ScalarType dtype = ScalarType.Float64) => Flow(seed, dtype: dtype, outChannels: 3);

    public static SparseStructureDecoder Decoder(long seed = 2) => Randomize(new SparseStructureDecoder(DecoderConfig, ScalarType.Float64), seed);

    public static SparseStructureEncoder Encoder(long seed = 3) => Randomize(new SparseStructureEncoder(EncoderConfig, ScalarType.Float64), seed);

    public static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var d = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    public static double MaxAbs(Tensor a)
    {
        using var d = a.to(ScalarType.Float64).abs().max();
        return d.item<double>();
    }
}
