using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// TRELLIS's <c>SparseSubdivideBlock3d</c>: <c>h = SiLU(GN(x))</c>; both h and x are subdivided (8 children per voxel,
/// z fastest, children consecutive); <c>h = conv3(SiLU(GN(conv3(h))))</c>; output <c>h + skip(x)</c>, with skip a
/// kernel-1 sparse conv (spconv's 1×1 quirk) when the channel count changes, identity otherwise.
/// GN is <c>SparseGroupNorm32</c> (per sample, eps 1e-5, affine). Names: <c>act_layers.0</c>, <c>out_layers.{0,1,3}</c>,
/// <c>skip_connection</c>.
/// </summary>
internal sealed class SparseSubdivideBlock3d : nn.Module
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private readonly ModuleList<nn.Module> act_layers;
    private readonly ModuleList<nn.Module> out_layers;
    private readonly SparseConv3d? skip_connection;
#pragma warning restore IDE1006

    public SparseSubdivideBlock3d(long channels, int resolution, long? outChannels = null, int numGroups = 32,
        ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(SparseSubdivideBlock3d))
    {
        if (channels < 1) throw new ArgumentException($"channels must be >= 1, found {channels}.", nameof(channels));
        Channels = channels;
        Resolution = resolution;
        OutChannels = outChannels ?? channels;
        act_layers = new ModuleList<nn.Module>(new SparseGroupNorm32(numGroups, channels, 1e-5, true, dtype, device), nn.SiLU());
        out_layers = new ModuleList<nn.Module>(
            new SparseConv3d(channels, OutChannels, 3, true, dtype, device),
            new SparseGroupNorm32(numGroups, OutChannels, 1e-5, true, dtype, device),
            nn.SiLU(),
            new SparseConv3d(OutChannels, OutChannels, 3, true, dtype, device));
        skip_connection = OutChannels == channels ? null : new SparseConv3d(channels, OutChannels, 1, true, dtype, device);
        RegisterComponents();
    }

    public long Channels { get; }

    public long OutChannels { get; }

    /// <summary>Input resolution (the output is at twice this).</summary>
    public int Resolution { get; }

    public SparseTensor Forward(SparseTensor x)
    {
        var gn1 = (SparseGroupNorm32)act_layers[0];
        var conv1 = (SparseConv3d)out_layers[0];
        var gn2 = (SparseGroupNorm32)out_layers[1];
        var conv2 = (SparseConv3d)out_layers[3];

        // GN, SiLU and the kernel-1 skip act row by row, so they run on the parent rows before the copy, and conv1 of the
        // copies is computed from the parents (SparseConv3d.ApplyCopied): 8× fewer rows in its GEMM. Each stage's
        // temporaries are released before the next one starts: at 256³ one float32 copy of the features is 0.5 GB, and
        // keeping every intermediate to the end of the block took the decoder to 16 GB.
        var wdt = conv1.conv.weight.dtype;
        var fine = SparseSpatial.SubdivideSites(x.Coordinates);
        var parent = torch.arange(fine.Count, dtype: ScalarType.Int64, device: x.Device).div(8, RoundingMode.floor);
        var a = gn1.ForwardSiLU(x, wdt);
        var h = Precision.Scoped(() => conv1.ApplyCopied(a, parent, fine));
        a.Dispose();
        var g = gn2.ForwardSiLU(new SparseTensor(h, fine), wdt);
        h.Dispose();
        h = Precision.Scoped(() => conv2.Apply(g, fine));
        g.Dispose();
        using var skip = Precision.Scoped(() => skip_connection is null ? x.Feats.alias()
            : skip_connection.Apply(x.Feats.As(skip_connection.conv.weight.dtype), x.Coordinates));
        h.add_(skip.index_select(0, parent));
        return new SparseTensor(h, fine);
    }

    /// <summary>Converts the convolutions to <paramref name="dtype"/> (TRELLIS's <c>convert_module_to_f16</c> leaves the norms).</summary>
    internal void ConvertConvolutions(ScalarType dtype)
    {
        foreach (var m in modules())
            if (m is SubMConv3dWeights w) w.to(dtype);
    }
}

/// <summary>
/// TRELLIS's structured-latent mesh decoder (<c>SLatMeshDecoder</c>, checkpoint <c>slat_dec_mesh_swin8_B_64l8m256c_fp16</c>)
/// up to, not including, FlexiCubes: a <see cref="SparseTransformerBase{TResult}"/> (swin attention), two
/// <c>SparseSubdivideBlock3d</c> (C → C/4 at 2× resolution, C/4 → C/8 at 4×), and <c>out_layer = Linear(C/8, 53 or 101)</c>;
/// each sample's output becomes the <see cref="FlexiCubesInputs"/> of a <c>4·resolution</c> grid.
/// </summary>
/// <remarks>State-dict names: <c>input_layer.*</c>, <c>blocks.{i}.*</c>, <c>upsample.{0,1}.*</c>, <c>out_layer.*</c>.</remarks>
public class SLatMeshDecoder : SparseTransformerBase<IReadOnlyList<FlexiCubesInputs>>
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private readonly ModuleList<SparseSubdivideBlock3d> upsample;
    private readonly Linear out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the decoder.</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default; the meta device builds shapes only).</param>
    /// <exception cref="ArgumentException">Invalid config (every problem listed) or dtype.</exception>
#pragma warning disable RS0022 // unsealed for TRELLIS's ElasticSLatMeshDecoder subclass; the base's members stay private protected
    public SLatMeshDecoder(SLatMeshDecoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
#pragma warning restore RS0022
        : base(config ?? throw new ArgumentNullException(nameof(config)), config.LatentChannels, dtype, device)
    {
        Config = config;
        long c = config.ModelChannels;
        int groups = (int)config.SubdivideNumGroups, resolution = (int)config.Resolution;
        upsample = new ModuleList<SparseSubdivideBlock3d>(
            new SparseSubdivideBlock3d(c, resolution, c / 4, groups, dtype, device),
            new SparseSubdivideBlock3d(c / 4, resolution * 2, c / 8, groups, dtype, device));
        out_layer = nn.Linear(c / 8, OutChannels, true, device, dtype);
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SLatMeshDecoderConfig Config { get; }

    /// <summary>Cubes per axis of the extraction grid: <c>4 · Resolution</c>.</summary>
    public int MeshResolution => 4 * Resolution;

    /// <summary>Whether the output carries per-vertex colours (and normal maps).</summary>
    public bool UseColor => Config.UseColor;

    /// <summary>Output channels per cube: 101 with colour, 53 without.</summary>
    public int OutChannels => UseColor ? FlexiCubesInputs.ChannelsWithColor : FlexiCubesInputs.ChannelsWithoutColor;

    /// <summary>
    /// Converts the transformer blocks' linear layers and the subdivide blocks' convolutions to <paramref name="dtype"/>
    /// (TRELLIS's <c>convert_to_fp16</c> for this decoder; norms and the input/output layers keep their dtype).
    /// </summary>
    public override void SetTorsoDType(ScalarType dtype)
    {
        base.SetTorsoDType(dtype);
        foreach (var block in upsample) block.ConvertConvolutions(dtype);
    }

    /// <summary>Decodes a structured latent into the FlexiCubes inputs of each sample.</summary>
    /// <param name="x">Latent features <c>[N, latent_channels]</c> on voxels with coordinates in <c>[0, resolution)</c>.</param>
    /// <returns>One <see cref="FlexiCubesInputs"/> per sample (the caller disposes them), in sample order.</returns>
    /// <exception cref="ArgumentException">Wrong feature width, or coordinates outside the grid.</exception>
    public override IReadOnlyList<FlexiCubesInputs> forward(SparseTensor x)
    {
        using var scope = torch.NewDisposeScope();
        return ToRepresentation(ForwardFeatures(x));
    }

    /// <summary>
    /// The network without the mesh extraction: per-cube features <c>[64·N, 53 or 101]</c> on the subdivided sites
    /// (each input voxel's 64 cubes consecutive, in subdivision order), in the input dtype.
    /// </summary>
    public SparseTensor ForwardFeatures(SparseTensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var h = ForwardTrunk(x);
        foreach (var block in upsample)
        {
            var hin = h;
            h = Precision.Scoped(() => block.Forward(hin));
        }
        var f = out_layer.forward(h.Feats.As(x.Dtype).As(out_layer.weight.dtype)).As(x.Dtype);
        return new SparseTensor(f.MoveToOuterDisposeScope(), h.Coordinates);
    }

    /// <summary>TRELLIS's <c>to_representation</c> up to FlexiCubes: the extractor inputs of each sample.</summary>
    /// <param name="h">Per-cube features (see <see cref="ForwardFeatures"/>) at <see cref="MeshResolution"/>.</param>
    public IReadOnlyList<FlexiCubesInputs> ToRepresentation(SparseTensor h)
    {
        ArgumentNullException.ThrowIfNull(h);
        var result = new List<FlexiCubesInputs>((int)h.BatchSize);
        try
        {
            for (int b = 0; b < h.BatchSize; b++)
            {
                using var scope = torch.NewDisposeScope();
                long start = h.Coordinates.RowOffsets[b], n = h.Coordinates.RowCounts[b];
                var coords = h.Coordinates.Coords64.narrow(0, start, n)[.., 1..];
                result.Add(FlexiCubesInputs.FromFeatures(coords, h.Feats.narrow(0, start, n), MeshResolution, UseColor));
            }
        }
        catch
        {
            foreach (var r in result) r.Dispose();
            throw;
        }
        return result;
    }
}
