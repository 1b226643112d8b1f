using MdtDist.Trellis.Modules;
using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
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
    /// <c>2d_filter_kernel_size</c>. Other keys are ignored, as TRELLIS ignores them. Problems are recorded in
    /// <paramref name="a"/> (reported by its owner's <c>Finish</c>).
    /// </summary>
    internal static GaussianRepresentationConfig Read(ConfigArgs a)
    {
        var lr = a.Object("lr", required: true, ignoreUnknown: true);
        long g = a.Int("num_gaussians");
        var act = a.String("scaling_activation");
        var activation = act switch
        {
            "softplus" => GaussianScalingActivation.Softplus,
            "exp" => GaussianScalingActivation.Exp,
            _ => (GaussianScalingActivation?)null,
        };
        var result = new GaussianRepresentationConfig(
            (int)Math.Clamp(g, 0, TrellisConfigLimits.MaxGaussians + 1), a.Double("voxel_size"), a.Bool("perturb_offset"),
            lr?.Double("_xyz") ?? 1, lr?.Double("_features_dc") ?? 1, lr?.Double("_scaling") ?? 1, lr?.Double("_rotation") ?? 1, lr?.Double("_opacity") ?? 1,
            a.Double("3d_filter_kernel_size"), a.Double("scaling_bias"), a.Double("opacity_bias"),
            activation ?? GaussianScalingActivation.Softplus, a.DoubleOrNull("2d_filter_kernel_size"));
        if (activation is null && act.Length > 0) a.Reject("scaling_activation", $"'{act}' is not 'softplus' or 'exp'");
        if (g < 1 || g > TrellisConfigLimits.MaxGaussians) a.Reject("num_gaussians", $"{g} is not in [1, {TrellisConfigLimits.MaxGaussians}]");
        return result;
    }

    /// <summary>The <c>representation_config</c> object (TRELLIS's keys).</summary>
    public JsonObject ToJson() => new()
    {
        ["lr"] = new JsonObject
        {
            ["_xyz"] = LrXyz, ["_features_dc"] = LrFeaturesDc, ["_opacity"] = LrOpacity, ["_scaling"] = LrScaling, ["_rotation"] = LrRotation,
        },
        ["perturb_offset"] = PerturbOffset,
        ["voxel_size"] = VoxelSize,
        ["num_gaussians"] = NumGaussians,
        ["2d_filter_kernel_size"] = FilterKernelSize2D,
        ["3d_filter_kernel_size"] = FilterKernelSize3D,
        ["scaling_bias"] = ScalingBias,
        ["opacity_bias"] = OpacityBias,
        ["scaling_activation"] = ScalingActivation == GaussianScalingActivation.Exp ? "exp" : "softplus",
    };

    /// <summary>Throws when a value is out of its domain.</summary>
    internal void Validate()
    {
        var p = new ConfigProblems("representation_config");
        Validate(p);
        p.ThrowIfAny();
    }

    /// <summary>Records every value out of its domain (keys as in <c>representation_config</c>).</summary>
    internal void Validate(ConfigProblems p)
    {
        const string rc = "representation_config.";
        p.Range(rc + "num_gaussians", NumGaussians, 1, TrellisConfigLimits.MaxGaussians);
        // 2h - 1 reaches -1 (the first point is 0), so atanh((2h - 1) / voxel_size) needs voxel_size >= 1 (TRELLIS uses 1.5).
        if (p.Check(VoxelSize > 0 && double.IsFinite(VoxelSize), $"{rc}voxel_size must be a finite value > 0, got {VoxelSize}") && PerturbOffset)
            p.Check(VoxelSize >= 1, $"with perturb_offset, {rc}voxel_size must be >= 1 (the Hammersley offsets are atanh((2h - 1) / voxel_size)), got {VoxelSize}");
        p.Check(FilterKernelSize3D >= 0 && double.IsFinite(FilterKernelSize3D), $"{rc}3d_filter_kernel_size must be >= 0, got {FilterKernelSize3D}");
        p.Check(ScalingBias > 0 && double.IsFinite(ScalingBias), $"{rc}scaling_bias must be > 0, got {ScalingBias}");
        p.Check(OpacityBias > 0 && OpacityBias < 1, $"{rc}opacity_bias must lie in (0, 1), got {OpacityBias}");
        p.Check(new[] { LrXyz, LrFeaturesDc, LrScaling, LrRotation, LrOpacity }.All(double.IsFinite), $"{rc}lr values must be finite");
    }
}

/// <summary>
/// TRELLIS's structured-latent Gaussian decoder (<c>SLatGaussianDecoder</c>, checkpoint
/// <c>slat_dec_gs_swin8_B_64l8gs32_fp16</c>): a <see cref="SparseTransformerBase{TResult}"/> (swin attention), then
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
public class SLatGaussianDecoder : SparseTransformerBase<IReadOnlyList<Gaussians>>
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private readonly Linear out_layer;
    private readonly Tensor offset_perturbation;
#pragma warning restore IDE1006

    private static readonly double[] Aabb = { -0.5, -0.5, -0.5, 1.0, 1.0, 1.0 };

    /// <summary>Builds the decoder.</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default; the meta device builds shapes only).</param>
    /// <exception cref="ArgumentException">Invalid config (every problem listed) or dtype.</exception>
#pragma warning disable RS0022 // unsealed for TRELLIS's ElasticSLatGaussianDecoder subclass; the base's members stay private protected
    public SLatGaussianDecoder(SLatGaussianDecoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
#pragma warning restore RS0022
        : base(config ?? throw new ArgumentNullException(nameof(config)), config.LatentChannels, dtype, device)
    {
        Config = config;
        var representation = config.Representation;
        out_layer = nn.Linear(config.ModelChannels, representation.ChannelsPerVoxel, true, device, dtype);
        offset_perturbation = HammersleyPerturbation(representation.NumGaussians, representation.VoxelSize, Precision.AtLeastFloat32(dtype), device)
            .DetachFromDisposeScope();
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SLatGaussianDecoderConfig Config { get; }

    /// <summary>How the output becomes Gaussians.</summary>
    public GaussianRepresentationConfig Representation => Config.Representation;

    /// <summary>The <c>offset_perturbation</c> buffer <c>[G, 3]</c> (the registered tensor; do not dispose).</summary>
    internal Tensor OffsetPerturbation => get_buffer(nameof(offset_perturbation)) ?? offset_perturbation;

    /// <summary>Decodes a structured latent into one Gaussian set per sample.</summary>
    /// <param name="x">Latent features <c>[N, latent_channels]</c> on voxels with coordinates in <c>[0, resolution)</c>.</param>
    /// <returns>One <see cref="Gaussians"/> per sample (the caller disposes them), in sample order.</returns>
    /// <exception cref="ArgumentException">Wrong feature width, or coordinates outside the grid.</exception>
    public override IReadOnlyList<Gaussians> forward(SparseTensor x)
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
