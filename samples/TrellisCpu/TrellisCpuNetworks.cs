using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace TrellisCpu;

/// <summary>The size of the networks the benchmark builds.</summary>
public enum NetworkScale
{
    /// <summary>TRELLIS-image-large as released: DINOv2 ViT-L/14-reg, the L flows (1024 wide, 24 blocks), the B decoders (768 wide, 12 blocks).</summary>
    Large,
    /// <summary>The same architecture at toy widths (a smoke test in seconds).</summary>
    Tiny,
}

/// <summary>
/// The six networks of TRELLIS-image-large (image encoder, two flows, structure decoder, Gaussian and mesh decoders)
/// with seeded random weights, held in one dtype (the compute dtype: bfloat16 weights stay 16-bit, as released).
/// </summary>
public sealed class TrellisCpuNetworks : IDisposable
{
    private TrellisCpuNetworks(Dinov2Model imageEncoder, TrellisPipeline pipeline)
    {
        ImageEncoder = imageEncoder;
        Pipeline = pipeline;
    }

    /// <summary>DINOv2 (TRELLIS's image condition model).</summary>
    public Dinov2Model ImageEncoder { get; }

    /// <summary>The two flows and three decoders as a pipeline.</summary>
    public TrellisPipeline Pipeline { get; }

    /// <summary>Every network with its name, in pipeline order.</summary>
    public IEnumerable<(string Name, nn.Module Module)> All()
    {
        yield return ("image encoder (DINOv2)", ImageEncoder);
        yield return ("stage-1 flow", Pipeline.StructureFlow);
        yield return ("structure decoder", Pipeline.StructureDecoder);
        yield return ("stage-2 flow", Pipeline.LatentFlow);
        yield return ("Gaussian decoder", Pipeline.GaussianDecoder!);
        yield return ("mesh decoder", Pipeline.MeshDecoder!);
    }

    /// <summary>The configs of the five pipeline networks.</summary>
    /// <param name="StructureFlow">Stage-1 flow.</param>
    /// <param name="StructureDecoder">Structure decoder.</param>
    /// <param name="LatentFlow">Stage-2 flow.</param>
    /// <param name="GaussianDecoder">Gaussian decoder.</param>
    /// <param name="MeshDecoder">Mesh decoder.</param>
    public sealed record PipelineConfigs(SparseStructureFlowConfig StructureFlow, SparseStructureDecoderConfig StructureDecoder, SLatFlowConfig LatentFlow,
        SLatGaussianDecoderConfig GaussianDecoder, SLatMeshDecoderConfig MeshDecoder);

    /// <summary>The released configs (or toy widths), with <paramref name="blocks"/> transformer blocks when given.</summary>
    /// <param name="scale">Released sizes or toy widths.</param>
    /// <param name="blocks">Transformer blocks of every network (null: the released depth).</param>
    /// <param name="cond">Width of the condition tokens.</param>
    public static PipelineConfigs Configs(NetworkScale scale, int? blocks, long cond)
    {
        if (blocks is < 1) throw new ArgumentException($"blocks must be >= 1, got {blocks}.", nameof(blocks));
        bool large = scale == NetworkScale.Large;
        long Depth(long released) => blocks ?? released;
        var ss = large
            ? SparseStructureFlowConfig.ImageLarge with { NumBlocks = Depth(24) }
            : SparseStructureFlowConfig.ImageLarge with { ModelChannels = 64, CondChannels = cond, NumBlocks = Depth(1), NumHeads = 2 };
        var ssDec = large
            ? SparseStructureDecoderConfig.Released
            : SparseStructureDecoderConfig.Released with { Channels = new long[] { 32, 16, 8 }, NumResBlocks = 1, NumResBlocksMiddle = 1 };
        var slat = large
            ? SLatFlowConfig.ImageLarge with { NumBlocks = Depth(24) }
            : SLatFlowConfig.ImageLarge with { ModelChannels = 64, CondChannels = cond, NumBlocks = Depth(1), NumHeads = 2, IoBlockChannels = new long[] { 16 } };
        // toy widths: the mesh decoder's subdivision GroupNorms (32 groups of model_channels/8) need a multiple of 256
        var gs = large ? SLatGaussianDecoderConfig.Released with { NumBlocks = Depth(12) }
            : SLatGaussianDecoderConfig.Released with { NumBlocks = Depth(12), ModelChannels = 256, NumHeads = 4 };
        var mesh = large ? SLatMeshDecoderConfig.Released with { NumBlocks = Depth(12) }
            : SLatMeshDecoderConfig.Released with { NumBlocks = Depth(12), ModelChannels = 256, NumHeads = 4 };
        return new PipelineConfigs(ss, ssDec, slat, gs, mesh);
    }

    /// <summary>Builds the networks with random weights (see <see cref="Randomize{T}"/>; seeds <paramref name="seed"/> … +5).</summary>
    /// <param name="scale">Released sizes or toy widths.</param>
    /// <param name="dtype">Weight and compute dtype.</param>
    /// <param name="blocks">Transformer blocks of every network (null: the released depth), for quick runs.</param>
    /// <param name="seed">Seed of the first network's weights.</param>
    public static TrellisCpuNetworks Build(NetworkScale scale, ScalarType dtype, int? blocks = null, long seed = 1)
    {
        bool large = scale == NetworkScale.Large;
        var dinoConfig = large ? Dinov2Config.VitL14Reg with { Depth = blocks ?? 24 } : new Dinov2Config(64, blocks ?? 1, 2);
        var dino = Randomize(new Dinov2Model(dinoConfig, dtype), seed);
        var c = Configs(scale, blocks, dinoConfig.EmbedDim);
        var pipeline = new TrellisPipeline(
            Randomize(new SparseStructureFlowModel(c.StructureFlow, dtype), seed + 1),
            Randomize(new SparseStructureDecoder(c.StructureDecoder, dtype), seed + 2),
            Randomize(new SLatFlowModel(c.LatentFlow, dtype), seed + 3),
            Randomize(new SLatGaussianDecoder(c.GaussianDecoder, dtype), seed + 4),
            meshDecoder: Randomize(new SLatMeshDecoder(c.MeshDecoder, dtype), seed + 5));
        var nets = new TrellisCpuNetworks(dino, pipeline);
        foreach (var (_, m) in nets.All()) m.eval();
        return nets;
    }

    /// <summary>
    /// Random weights with the distribution of <see cref="RandomTinyTrellis.Randomize{T}"/> (matrices and kernels
    /// N(0, 1/fan_in), biases N(0, 0.05²), other vectors 1 + N(0, 0.1²)), drawn in place in the parameter's dtype: that
    /// helper draws float64 so that every dtype gets the same weights, which for the 1.5 B parameters at full size takes
    /// minutes on 2 cores and a float64 copy of the largest tensor. Here a float32 and a bfloat16 build differ
    /// (a comparison of the two converts one build instead).
    /// </summary>
    public static T Randomize<T>(T model, long seed) where T : nn.Module
    {
        var g = new Generator((ulong)seed);
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            if (p.dim() >= 2) p.normal_(0, 1 / Math.Sqrt(p.numel() / (double)p.shape[0]), generator: g);
            else if (name.EndsWith("bias", StringComparison.Ordinal)) p.normal_(0, 0.05, generator: g);
            else p.normal_(1, 0.1, generator: g);
        }
        return model;
    }

    /// <summary>Parameter count and bytes of every network.</summary>
    public IReadOnlyList<(string Name, long Parameters, long Bytes)> Sizes() =>
        All().Select(n =>
        {
            long count = 0, bytes = 0;
            foreach (var p in n.Module.parameters()) { count += p.numel(); bytes += p.numel() * p.element_size(); }
            foreach (var b in n.Module.buffers()) bytes += b.numel() * b.element_size();
            return (n.Name, count, bytes);
        }).ToList();

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var (_, m) in All()) m.Dispose();
    }
}
