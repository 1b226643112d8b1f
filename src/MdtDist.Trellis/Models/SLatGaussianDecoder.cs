using MdtDist.Trellis.Modules;
using System.Text.Json;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// The <c>representation_config</c> of TRELLIS's Gaussian decoder: how the network output of every voxel becomes
/// <see cref="NumGaussians"/> Gaussians.
/// </summary>
/// <param name="NumGaussians">Gaussians per voxel (32 in TRELLIS).</param>
/// <param name="VoxelSize">How far (in voxels) the offsets reach: <c>tanh(offset) / resolution · 0.5 · voxel_size</c> (1.5).</param>
/// <param name="PerturbOffset">Add the fixed Hammersley offsets (<c>offset_perturbation</c>) before the tanh.</param>
/// <param name="LrXyz">Multiplier of the position offsets (<c>lr['_xyz']</c>).</param>
/// <param name="LrFeaturesDc">Multiplier of the colour coefficients.</param>
/// <param name="LrScaling">Multiplier of the raw scales.</param>
/// <param name="LrRotation">Multiplier of the raw rotations (0.1 in TRELLIS).</param>
/// <param name="LrOpacity">Multiplier of the raw opacities.</param>
/// <param name="FilterKernelSize3D">The 3D filter (<c>3d_filter_kernel_size</c>, the Gaussians' minimum kernel size).</param>
/// <param name="ScalingBias">The Gaussians' scaling bias.</param>
/// <param name="OpacityBias">The Gaussians' opacity bias.</param>
/// <param name="ScalingActivation">The Gaussians' scaling activation.</param>
/// <param name="FilterKernelSize2D">The renderer's 2D filter (<c>2d_filter_kernel_size</c>); kept for the renderer, unused by the decoder.</param>
public sealed record GaussianRepresentationConfig(
    int NumGaussians,
    double VoxelSize,
    bool PerturbOffset,
    double LrXyz,
    double LrFeaturesDc,
    double LrScaling,
    double LrRotation,
    double LrOpacity,
    double FilterKernelSize3D,
    double ScalingBias,
    double OpacityBias,
    GaussianScalingActivation ScalingActivation,
    double? FilterKernelSize2D = null)
{
    /// <summary>The configuration of TRELLIS-image-large's <c>slat_dec_gs_swin8_B_64l8gs32_fp16</c>.</summary>
    public static GaussianRepresentationConfig Trellis { get; } = new(32, 1.5, true, 1.0, 1.0, 1.0, 0.1, 1.0, 9e-4, 4e-3, 0.1,
        GaussianScalingActivation.Softplus, 0.1);

    /// <summary>Output channels per voxel: <c>14 · NumGaussians</c> (xyz 3, colour 3, scale 3, rotation 4, opacity 1).</summary>
    public int ChannelsPerVoxel => 14 * NumGaussians;

    /// <summary>
    /// Reads TRELLIS's <c>representation_config</c> object. Required: <c>lr</c> (with <c>_xyz</c>, <c>_features_dc</c>,
    /// <c>_scaling</c>, <c>_rotation</c>, <c>_opacity</c>), <c>perturb_offset</c>, <c>voxel_size</c>, <c>num_gaussians</c>,
    /// <c>3d_filter_kernel_size</c>, <c>scaling_bias</c>, <c>opacity_bias</c>, <c>scaling_activation</c>; optional
    /// <c>2d_filter_kernel_size</c>. Other keys are ignored, as TRELLIS ignores them.
    /// </summary>
    /// <exception cref="ArgumentException">A required key is missing or has the wrong type or value.</exception>
    public static GaussianRepresentationConfig FromJson(JsonElement config)
    {
        if (config.ValueKind != JsonValueKind.Object)
            throw new ArgumentException($"representation_config must be a JSON object, found {config.ValueKind}.", nameof(config));
        JsonElement Get(JsonElement obj, string key, string where) =>
            obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v
            : throw new ArgumentException($"{where} is missing the required key '{key}'.", nameof(config));
        double Num(JsonElement obj, string key, string where)
        {
            var v = Get(obj, key, where);
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble()
                : throw new ArgumentException($"{where}: '{key}' must be a number, found {v.ValueKind} {v.GetRawText()}.", nameof(config));
        }
        const string rc = "representation_config";
        var lr = Get(config, "lr", rc);
        if (lr.ValueKind != JsonValueKind.Object) throw new ArgumentException($"{rc}: 'lr' must be an object, found {lr.ValueKind}.", nameof(config));
        var perturb = Get(config, "perturb_offset", rc);
        if (perturb.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            throw new ArgumentException($"{rc}: 'perturb_offset' must be true or false, found {perturb.GetRawText()}.", nameof(config));
        double g = Num(config, "num_gaussians", rc);
        if (g != Math.Floor(g) || g < 1 || g > int.MaxValue / 14)
            throw new ArgumentException($"{rc}: 'num_gaussians' must be a positive integer, found {g}.", nameof(config));
        var act = Get(config, "scaling_activation", rc).GetString() switch
        {
            "softplus" => GaussianScalingActivation.Softplus,
            "exp" => GaussianScalingActivation.Exp,
            var s => throw new ArgumentException($"{rc}: 'scaling_activation' must be 'softplus' or 'exp', found '{s}'.", nameof(config)),
        };
        double? f2 = config.TryGetProperty("2d_filter_kernel_size", out var f2e) && f2e.ValueKind == JsonValueKind.Number ? f2e.GetDouble() : null;
        var result = new GaussianRepresentationConfig((int)g, Num(config, "voxel_size", rc), perturb.ValueKind == JsonValueKind.True,
            Num(lr, "_xyz", rc + ".lr"), Num(lr, "_features_dc", rc + ".lr"), Num(lr, "_scaling", rc + ".lr"), Num(lr, "_rotation", rc + ".lr"),
            Num(lr, "_opacity", rc + ".lr"), Num(config, "3d_filter_kernel_size", rc), Num(config, "scaling_bias", rc),
            Num(config, "opacity_bias", rc), act, f2);
        result.Validate();
        return result;
    }

    /// <summary>Throws when a value is out of its domain.</summary>
    internal void Validate()
    {
        if (NumGaussians < 1) throw new ArgumentException($"NumGaussians must be >= 1, found {NumGaussians}.", nameof(NumGaussians));
        // 2h - 1 reaches -1 (the first point is 0), so atanh((2h - 1) / voxel_size) needs voxel_size >= 1 (TRELLIS uses 1.5).
        if (!(VoxelSize > 0) || !double.IsFinite(VoxelSize))
            throw new ArgumentException($"VoxelSize must be a finite value > 0, found {VoxelSize}.", nameof(VoxelSize));
        if (PerturbOffset && VoxelSize < 1)
            throw new ArgumentException($"with PerturbOffset, VoxelSize must be >= 1 (the Hammersley offsets are atanh((2h - 1) / voxel_size)), found {VoxelSize}.", nameof(VoxelSize));
        if (!(FilterKernelSize3D >= 0)) throw new ArgumentException($"FilterKernelSize3D must be >= 0, found {FilterKernelSize3D}.", nameof(FilterKernelSize3D));
        if (!(ScalingBias > 0)) throw new ArgumentException($"ScalingBias must be > 0, found {ScalingBias}.", nameof(ScalingBias));
        if (!(OpacityBias > 0 && OpacityBias < 1)) throw new ArgumentException($"OpacityBias must lie in (0, 1), found {OpacityBias}.", nameof(OpacityBias));
    }
}

/// <summary>Config helpers shared by the decoders.</summary>
internal static class DecoderConfig
{
    /// <summary>The <c>representation_config</c> object of a decoder config (args object or whole <c>{"name", "args"}</c>).</summary>
    public static JsonElement RepresentationConfig(JsonElement config, string className)
    {
        var args = config.ValueKind == JsonValueKind.Object && config.TryGetProperty("name", out _)
            && config.TryGetProperty("args", out var inner) && inner.ValueKind == JsonValueKind.Object ? inner : config;
        if (args.ValueKind != JsonValueKind.Object || !args.TryGetProperty("representation_config", out var rep) || rep.ValueKind == JsonValueKind.Null)
            throw new ArgumentException($"{className} config: required argument 'representation_config' is missing.", "args");
        if (rep.ValueKind != JsonValueKind.Object)
            throw new ArgumentException($"{className} config: 'representation_config' must be an object, found {rep.ValueKind}.", "args");
        return rep;
    }
}

/// <summary>
/// TRELLIS's structured-latent Gaussian decoder (<c>SLatGaussianDecoder</c>, checkpoint
/// <c>slat_dec_gs_swin8_B_64l8gs32_fp16</c>): a <see cref="SparseTransformerBase"/> (swin attention), then
/// <c>F.layer_norm</c> (eps 1e-5, no affine) and <c>out_layer = Linear(C, 14·G)</c>; every voxel's output becomes G
/// Gaussians of a per-sample <see cref="Gaussians"/> set.
/// </summary>
/// <remarks>
/// State-dict names: <c>input_layer.*</c>, <c>blocks.{i}.*</c>, <c>out_layer.*</c> and the buffer
/// <c>offset_perturbation [G, 3]</c> = <c>atanh((2·hammersley(i) − 1) / voxel_size)</c>, built on construction
/// (in at least float32, as TRELLIS) and overwritten by a checkpoint that stores it.
/// Output channel layout per voxel: <c>_xyz | _features_dc | _scaling | _rotation | _opacity</c> (3G, 3G, 3G, 4G, G),
/// gaussian-major inside each block.
/// </remarks>
public sealed class SLatGaussianDecoder : SparseTransformerBase
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private Linear out_layer;
    private Tensor offset_perturbation;
#pragma warning restore IDE1006

    private static readonly double[] Aabb = { -0.5, -0.5, -0.5, 1.0, 1.0, 1.0 };

    /// <summary>Builds the decoder with TRELLIS's constructor arguments.</summary>
    /// <exception cref="ArgumentException">Unsupported or inconsistent arguments.</exception>
    public SLatGaussianDecoder(int resolution, int modelChannels, int latentChannels, int numBlocks, GaussianRepresentationConfig representation,
        int? numHeads = null, int numHeadChannels = 64, double mlpRatio = 4, string attnMode = "swin", int windowSize = 8,
        string peMode = "ape", bool qkRmsNorm = false, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(SLatGaussianDecoder), resolution, latentChannels, modelChannels, numBlocks, numHeads, numHeadChannels, mlpRatio, attnMode, windowSize, peMode, qkRmsNorm, dtype, device)
    {
        ArgumentNullException.ThrowIfNull(representation);
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1, found {resolution}.", nameof(resolution));
        representation.Validate();
        Representation = representation;
        out_layer = nn.Linear(modelChannels, representation.ChannelsPerVoxel, true, device, dtype);
        offset_perturbation = HammersleyPerturbation(representation.NumGaussians, representation.VoxelSize, Precision.AtLeastFloat32(dtype), device)
            .DetachFromDisposeScope();
        RegisterComponents();
    }

    /// <summary>
    /// Builds the decoder from a TRELLIS config: the <c>args</c> object of <c>ckpts/NAME.json</c>, or the whole
    /// <c>{"name": "SLatGaussianDecoder", "args": {...}}</c>. <c>use_fp16</c> and <c>use_checkpoint</c> are accepted;
    /// precision is chosen by <paramref name="dtype"/> (and <see cref="SparseTransformerBase.ConvertTorso"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Missing, unknown or unsupported arguments.</exception>
    public static SLatGaussianDecoder FromConfig(JsonElement args, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var a = new ModelArgs(args, nameof(SLatGaussianDecoder), "ElasticSLatGaussianDecoder");
        var rep = DecoderConfig.RepresentationConfig(args, nameof(SLatGaussianDecoder));
        a.Accept("representation_config");
        var dec = new SLatGaussianDecoder(
            a.Int("resolution"), a.Int("model_channels"), a.Int("latent_channels"), a.Int("num_blocks"),
            GaussianRepresentationConfig.FromJson(rep),
            a.IntOrNull("num_heads", null), a.Int("num_head_channels", 64), a.Double("mlp_ratio", 4), a.String("attn_mode", "swin"),
            a.Int("window_size", 8), a.String("pe_mode", "ape"), a.Bool("qk_rms_norm", false), dtype, device);
        a.Accept("use_fp16", "use_checkpoint");
        a.RejectUnknown();
        return dec;
    }

    /// <summary>How the output becomes Gaussians.</summary>
    public GaussianRepresentationConfig Representation { get; }

    /// <summary>The <c>offset_perturbation</c> buffer <c>[G, 3]</c> (the registered tensor; do not dispose).</summary>
    public Tensor OffsetPerturbation => get_buffer(nameof(offset_perturbation)) ?? offset_perturbation;

    /// <summary>Decodes a structured latent into one Gaussian set per sample.</summary>
    /// <param name="x">Latent features <c>[N, latent_channels]</c> on voxels with coordinates in <c>[0, resolution)</c>.</param>
    /// <returns>One <see cref="Gaussians"/> per sample (the caller disposes them), in sample order.</returns>
    /// <exception cref="ArgumentException">Wrong feature width, or coordinates outside the grid.</exception>
    public IReadOnlyList<Gaussians> Forward(SparseTensor x)
    {
        using var scope = torch.NewDisposeScope();
        return ToRepresentation(ForwardFeatures(x));
    }

    /// <summary>
    /// The network without the conversion to Gaussians: <c>out_layer(layer_norm(trunk(x)))</c>, <c>[N, 14·G]</c> on the
    /// input sites, in the input dtype.
    /// </summary>
    public SparseTensor ForwardFeatures(SparseTensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var h = ForwardTrunk(x);
        var f = Precision.LayerNorm(h.Feats.As(x.Dtype), null, null, 1e-5);
        f = out_layer.forward(f.As(out_layer.weight.dtype)).As(x.Dtype);
        return new SparseTensor(f.MoveToOuterDisposeScope(), x.Coordinates);
    }

    /// <summary>
    /// TRELLIS's <c>to_representation</c>: per sample, <c>_xyz = (coords + 0.5) / resolution + tanh(offset · lr + perturbation)
    /// / resolution · 0.5 · voxel_size</c> ([n·G, 3], voxel-major) and the other blocks reshaped and multiplied by their lr.
    /// </summary>
    /// <param name="h">Network output <c>[N, 14·G]</c> (see <see cref="ForwardFeatures"/>).</param>
    public IReadOnlyList<Gaussians> ToRepresentation(SparseTensor h)
    {
        ArgumentNullException.ThrowIfNull(h);
        int g = Representation.NumGaussians;
        if (h.Feats.dim() != 2 || h.Feats.shape[1] != Representation.ChannelsPerVoxel)
            throw new ArgumentException($"expected decoder output feats [N, {Representation.ChannelsPerVoxel}], found [{string.Join(", ", h.Feats.shape)}].", nameof(h));
        var rep = Representation;
        var result = new List<Gaussians>((int)h.BatchSize);
        try
        {
            for (int b = 0; b < h.BatchSize; b++)
            {
                using var scope = torch.NewDisposeScope();
                long start = h.Coordinates.RowOffsets[b], n = h.Coordinates.RowCounts[b];
                var feats = h.Feats.narrow(0, start, n);
                var xyzDtype = Precision.AtLeastFloat32(feats.dtype);
                var xyz = (h.Coordinates.Coords64.narrow(0, start, n)[.., 1..].to(xyzDtype) + 0.5) / Resolution;

                var offset = feats[.., 0..(3 * g)].reshape(-1, g, 3) * rep.LrXyz;
                if (rep.PerturbOffset) offset = offset + OffsetPerturbation.On(feats.device);
                offset = torch.tanh(offset) / Resolution * 0.5 * rep.VoxelSize;
                var pos = (xyz.unsqueeze(1) + offset).flatten(0, 1);
                var fdc = feats[.., (3 * g)..(6 * g)].reshape(-1, g, 1, 3).flatten(0, 1) * rep.LrFeaturesDc;
                var scaling = feats[.., (6 * g)..(9 * g)].reshape(-1, g, 3).flatten(0, 1) * rep.LrScaling;
                var rotation = feats[.., (9 * g)..(13 * g)].reshape(-1, g, 4).flatten(0, 1) * rep.LrRotation;
                var opacity = feats[.., (13 * g)..(14 * g)].reshape(-1, g, 1).flatten(0, 1) * rep.LrOpacity;

                // TRELLIS's Gaussian attributes share one dtype here (positions may be wider than half-precision feats).
                var dt = pos.dtype;
                var gs = new Gaussians(Aabb, 0, rep.FilterKernelSize3D, rep.ScalingBias, rep.OpacityBias, rep.ScalingActivation);
                result.Add(gs);
                gs.SetParameters(pos, fdc.As(dt), scaling.As(dt), rotation.As(dt), opacity.As(dt));
            }
        }
        catch
        {
            foreach (var gs in result) gs.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>
    /// <c>atanh((2·h_i − 1) / voxel_size)</c> for the Hammersley points <c>h_i = (i / G, radical_inverse₂(i), radical_inverse₃(i))</c>,
    /// computed in <paramref name="dtype"/> from the float64 sequence (TRELLIS rounds the sequence to float32 first).
    /// </summary>
    internal static Tensor HammersleyPerturbation(int numGaussians, double voxelSize, ScalarType dtype, Device? device)
    {
        var h = new double[numGaussians * 3];
        for (int i = 0; i < numGaussians; i++)
        {
            h[3 * i] = (double)i / numGaussians;
            h[3 * i + 1] = RadicalInverse(2, i);
            h[3 * i + 2] = RadicalInverse(3, i);
        }
        using var scope = torch.NewDisposeScope();
        var t = torch.tensor(h, new long[] { numGaussians, 3 }, dtype: dtype);
        var p = torch.atanh((t * 2 - 1) / voxelSize);
        if (device is not null) p = p.to(device);
        return p.MoveToOuterDisposeScope();
    }

    /// <summary>The radical inverse of <paramref name="n"/> in <paramref name="b"/>ase, with TRELLIS's operation order.</summary>
    internal static double RadicalInverse(int b, int n)
    {
        double val = 0, invBase = 1.0 / b, invBaseN = invBase;
        while (n > 0)
        {
            int digit = n % b;
            val += digit * invBaseN;
            n /= b;
            invBaseN *= invBase;
        }
        return val;
    }
}
