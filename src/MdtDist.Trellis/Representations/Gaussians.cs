using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>The activation that maps raw Gaussian scales to positive scales (TRELLIS's <c>scaling_activation</c>).</summary>
public enum GaussianScalingActivation
{
    /// <summary><c>exp</c>; the bias is <c>log(scaling_bias)</c>.</summary>
    Exp,

    /// <summary><c>softplus</c> (β = 1, threshold 20); the bias is the inverse softplus of <c>scaling_bias</c>.</summary>
    Softplus,
}

/// <summary>
/// A set of 3D Gaussians exactly as TRELLIS's <c>Gaussian</c> representation (spherical-harmonics degree 0) holds it:
/// raw tensors <c>_xyz [G, 3]</c>, <c>_features_dc [G, 1, 3]</c>, <c>_scaling [G, 3]</c>, <c>_rotation [G, 4]</c>
/// (w, x, y, z), <c>_opacity [G, 1]</c>, plus the constructor arguments that define the getters.
/// </summary>
/// <remarks>
/// <para>Getters (each returns a new tensor the caller owns):</para>
/// <list type="bullet">
/// <item><see cref="GetXyz"/> = <c>_xyz · aabb[3:] + aabb[:3]</c>.</item>
/// <item><see cref="GetScaling"/> = <c>sqrt(act(_scaling + scale_bias)² + mininum_kernel_size²)</c> (the 3D filter).</item>
/// <item><see cref="GetRotation"/> = <c>normalize(_rotation + [1, 0, 0, 0])</c>.</item>
/// <item><see cref="GetOpacity"/> = <c>sigmoid(_opacity + logit(opacity_bias))</c>.</item>
/// <item><see cref="GetFeatures"/> = <c>_features_dc</c>.</item>
/// </list>
/// <para>The instance owns its raw tensors (they are detached from any dispose scope); dispose it to free them.
/// Computations run in the raw tensors' dtype, promoted to at least float32 where TRELLIS uses a float32 constant.</para>
/// </remarks>
public sealed class Gaussians : IDisposable
{
    private Tensor? _xyz, _featuresDc, _scaling, _rotation, _opacity;
    private readonly double[] _aabb;

    /// <summary>Creates an empty Gaussian set with TRELLIS's constructor arguments; set the tensors with <see cref="SetParameters"/>.</summary>
    /// <param name="aabb">Six numbers: the box origin (3) and size (3); TRELLIS's decoders use [-0.5, -0.5, -0.5, 1, 1, 1].</param>
    /// <param name="shDegree">Spherical-harmonics degree; only 0 (what TRELLIS's decoders produce) is supported.</param>
    /// <param name="minimumKernelSize">TRELLIS's <c>mininum_kernel_size</c> (the decoder's <c>3d_filter_kernel_size</c>).</param>
    /// <param name="scalingBias">Positive scale the raw scaling 0 maps to (before the 3D filter).</param>
    /// <param name="opacityBias">Opacity in (0, 1) the raw opacity 0 maps to.</param>
    /// <param name="scalingActivation">Exp or softplus.</param>
    public Gaussians(IReadOnlyList<double> aabb, int shDegree = 0, double minimumKernelSize = 0.0, double scalingBias = 0.01,
        double opacityBias = 0.1, GaussianScalingActivation scalingActivation = GaussianScalingActivation.Exp)
    {
        ArgumentNullException.ThrowIfNull(aabb);
        if (aabb.Count != 6) throw new ArgumentException($"aabb must have 6 values (origin xyz, size xyz); found {aabb.Count}", nameof(aabb));
        if (aabb.Any(v => !double.IsFinite(v))) throw new ArgumentException($"aabb values must be finite; found [{string.Join(", ", aabb)}]", nameof(aabb));
        if (shDegree != 0) throw new ArgumentException($"only sh_degree 0 is supported (TRELLIS's decoders); found {shDegree}", nameof(shDegree));
        if (!(minimumKernelSize >= 0) || !double.IsFinite(minimumKernelSize))
            throw new ArgumentException($"minimumKernelSize must be a finite value >= 0; found {minimumKernelSize}", nameof(minimumKernelSize));
        if (!(scalingBias > 0) || !double.IsFinite(scalingBias))
            throw new ArgumentException($"scalingBias must be a finite value > 0; found {scalingBias}", nameof(scalingBias));
        if (!(opacityBias > 0 && opacityBias < 1))
            throw new ArgumentException($"opacityBias must lie in (0, 1); found {opacityBias}", nameof(opacityBias));
        if (!Enum.IsDefined(scalingActivation))
            throw new ArgumentException($"unknown scaling activation {scalingActivation}", nameof(scalingActivation));
        _aabb = aabb.ToArray();
        ShDegree = shDegree;
        MinimumKernelSize = minimumKernelSize;
        ScalingBias = scalingBias;
        OpacityBias = opacityBias;
        ScalingActivation = scalingActivation;
        ScaleBias = scalingActivation == GaussianScalingActivation.Exp ? Math.Log(scalingBias) : InverseSoftplus(scalingBias);
        OpacityLogitBias = Math.Log(opacityBias / (1 - opacityBias));
    }

    /// <summary>The box origin (3) and size (3).</summary>
    public IReadOnlyList<double> Aabb => _aabb;

    /// <summary>Spherical-harmonics degree (always 0).</summary>
    public int ShDegree { get; }

    /// <summary>The 3D filter size added in quadrature to every scale.</summary>
    public double MinimumKernelSize { get; }

    /// <summary>The constructor's scaling bias (a positive scale).</summary>
    public double ScalingBias { get; }

    /// <summary>The constructor's opacity bias (an opacity in (0, 1)).</summary>
    public double OpacityBias { get; }

    /// <summary>The scaling activation.</summary>
    public GaussianScalingActivation ScalingActivation { get; }

    /// <summary>The bias added to the raw scaling before the activation: the inverse activation of <see cref="ScalingBias"/>.</summary>
    public double ScaleBias { get; }

    /// <summary>The bias added to the raw opacity before the sigmoid: <c>logit(OpacityBias)</c>.</summary>
    public double OpacityLogitBias { get; }

    /// <summary>Number of Gaussians (0 before <see cref="SetParameters"/>).</summary>
    public long Count => _xyz?.shape[0] ?? 0;

    /// <summary>Whether the raw tensors have been set.</summary>
    public bool HasParameters => _xyz is not null;

    /// <summary>Raw positions <c>_xyz [G, 3]</c> in box units.</summary>
    public Tensor Xyz => _xyz ?? throw NotSet();

    /// <summary>Raw DC colour coefficients <c>_features_dc [G, 1, 3]</c>.</summary>
    public Tensor FeaturesDc => _featuresDc ?? throw NotSet();

    /// <summary>Raw scales <c>_scaling [G, 3]</c> (before bias and activation).</summary>
    public Tensor Scaling => _scaling ?? throw NotSet();

    /// <summary>Raw rotations <c>_rotation [G, 4]</c> (w, x, y, z; before the [1, 0, 0, 0] bias).</summary>
    public Tensor Rotation => _rotation ?? throw NotSet();

    /// <summary>Raw opacities <c>_opacity [G, 1]</c> (logits before the bias).</summary>
    public Tensor Opacity => _opacity ?? throw NotSet();

    /// <summary>
    /// Sets the raw tensors (shapes [G, 3], [G, 1, 3], [G, 3], [G, 4], [G, 1]; one floating dtype and device).
    /// The set keeps its own handles (aliases detached from dispose scopes); the caller keeps ownership of the arguments.
    /// </summary>
    public void SetParameters(Tensor xyz, Tensor featuresDc, Tensor scaling, Tensor rotation, Tensor opacity)
    {
        ArgumentNullException.ThrowIfNull(xyz);
        ArgumentNullException.ThrowIfNull(featuresDc);
        ArgumentNullException.ThrowIfNull(scaling);
        ArgumentNullException.ThrowIfNull(rotation);
        ArgumentNullException.ThrowIfNull(opacity);
        if (xyz.dim() != 2 || xyz.shape[1] != 3) throw new ArgumentException($"xyz must be [G, 3]; found [{string.Join(", ", xyz.shape)}]", nameof(xyz));
        long g = xyz.shape[0];
        Check(featuresDc, nameof(featuresDc), g, 1, 3);
        Check(scaling, nameof(scaling), g, 3);
        Check(rotation, nameof(rotation), g, 4);
        Check(opacity, nameof(opacity), g, 1);
        if (!xyz.is_floating_point()) throw new ArgumentException($"xyz must be a floating tensor; found {xyz.dtype}", nameof(xyz));
        foreach (var (t, n) in new[] { (featuresDc, nameof(featuresDc)), (scaling, nameof(scaling)), (rotation, nameof(rotation)), (opacity, nameof(opacity)) })
        {
            if (t.dtype != xyz.dtype) throw new ArgumentException($"{n} has dtype {t.dtype}, expected {xyz.dtype} (the dtype of xyz)", n);
            if (t.device.type != xyz.device.type || t.device.index != xyz.device.index) throw new ArgumentException($"{n} is on {t.device}, expected {xyz.device} (the device of xyz)", n);
        }
        DisposeTensors();
        _xyz = Own(xyz);
        _featuresDc = Own(featuresDc);
        _scaling = Own(scaling);
        _rotation = Own(rotation);
        _opacity = Own(opacity);
    }

    /// <summary>Positions in world units: <c>_xyz · aabb[3:] + aabb[:3]</c> ([G, 3]).</summary>
    public Tensor GetXyz()
    {
        using var scope = torch.NewDisposeScope();
        var dt = Promote(Xyz.dtype);
        var size = torch.tensor(new[] { _aabb[3], _aabb[4], _aabb[5] }, dtype: dt, device: Xyz.device);
        var origin = torch.tensor(new[] { _aabb[0], _aabb[1], _aabb[2] }, dtype: dt, device: Xyz.device);
        return (Xyz.to(dt) * size.unsqueeze(0) + origin.unsqueeze(0)).MoveToOuterDisposeScope();
    }

    /// <summary>Scales with the 3D filter: <c>sqrt(act(_scaling + scale_bias)² + mininum_kernel_size²)</c> ([G, 3]).</summary>
    public Tensor GetScaling()
    {
        using var scope = torch.NewDisposeScope();
        var x = Scaling + ScaleBias;
        var s = ScalingActivation == GaussianScalingActivation.Exp ? x.exp() : torch.nn.functional.softplus(x);
        return torch.sqrt(torch.square(s) + Math.Pow(MinimumKernelSize, 2)).MoveToOuterDisposeScope();
    }

    /// <summary>Unit quaternions (w, x, y, z): <c>normalize(_rotation + [1, 0, 0, 0])</c> ([G, 4]).</summary>
    public Tensor GetRotation()
    {
        using var scope = torch.NewDisposeScope();
        return torch.nn.functional.normalize(BiasedRotation(), p: 2, dim: -1, eps: 1e-12).MoveToOuterDisposeScope();
    }

    /// <summary>Opacities in (0, 1): <c>sigmoid(_opacity + logit(opacity_bias))</c> ([G, 1]).</summary>
    public Tensor GetOpacity()
    {
        using var scope = torch.NewDisposeScope();
        return torch.sigmoid(Opacity + OpacityLogitBias).MoveToOuterDisposeScope();
    }

    /// <summary>Colour features: the DC coefficients <c>_features_dc [G, 1, 3]</c> (a new handle to the same storage).</summary>
    public Tensor GetFeatures() => FeaturesDc.alias();

    /// <summary>The rotation with the bias and without normalisation: <c>_rotation + [1, 0, 0, 0]</c>.</summary>
    internal Tensor BiasedRotation()
    {
        using var scope = torch.NewDisposeScope();
        var bias = torch.zeros(4, dtype: Rotation.dtype, device: Rotation.device);
        bias[0] = 1;
        return (Rotation + bias.unsqueeze(0)).MoveToOuterDisposeScope();
    }

    /// <summary>Frees the raw tensors.</summary>
    public void Dispose() => DisposeTensors();

    private void DisposeTensors()
    {
        _xyz?.Dispose(); _featuresDc?.Dispose(); _scaling?.Dispose(); _rotation?.Dispose(); _opacity?.Dispose();
        _xyz = _featuresDc = _scaling = _rotation = _opacity = null;
    }

    private static Tensor Own(Tensor t) => t.alias().DetachFromDisposeScope();

    private static InvalidOperationException NotSet() => new("the Gaussian set has no parameters yet; call SetParameters first");

    private static void Check(Tensor t, string name, params long[] shape)
    {
        if (!t.shape.SequenceEqual(shape))
            throw new ArgumentException($"{name} must be [{string.Join(", ", shape)}]; found [{string.Join(", ", t.shape)}]", name);
    }

    /// <summary>TRELLIS's aabb is a float32 tensor: half-precision positions are promoted to float32, wider ones kept.</summary>
    private static ScalarType Promote(ScalarType t) => t is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : t;

    /// <summary><c>b + log(-expm1(-b))</c>, the inverse of softplus, in float64.</summary>
    private static double InverseSoftplus(double b)
    {
        using var t = torch.tensor(-b, dtype: ScalarType.Float64);
        using var em1 = t.expm1();
        return b + Math.Log(-em1.item<double>());
    }
}
