using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>Precision helpers shared by the sparse modules.</summary>
internal static class Precision
{
    /// <summary>The dtype TRELLIS's "32" layers compute in: float32, or the input dtype when it is wider (float64).</summary>
    public static ScalarType AtLeastFloat32(ScalarType t) => t == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary><c>F.layer_norm</c> over the last axis, computed in at least float32, returned in the input dtype.</summary>
    public static Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, double eps)
    {
        var ct = AtLeastFloat32(x.dtype);
        var xc = x.dtype == ct ? x : x.to(ct);
        var w = weight is null ? null : weight.dtype == ct ? weight : weight.to(ct);
        var b = bias is null ? null : bias.dtype == ct ? bias : bias.to(ct);
        var y = nn.functional.layer_norm(xc, new[] { x.shape[^1] }, w, b, eps);
        return y.dtype == x.dtype ? y : y.to(x.dtype);
    }

    /// <summary>Moves <paramref name="x"/> to <paramref name="device"/> when it is elsewhere.</summary>
    public static Tensor On(this Tensor x, Device device) =>
        x.device_type == device.type && x.device_index == device.index ? x : x.to(device);

    /// <summary>
    /// Runs <paramref name="f"/> in its own dispose scope and moves its result out, so that the temporaries of one loop
    /// iteration (a block, a chunk) are freed at once instead of living until the caller's scope ends.
    /// </summary>
    public static Tensor Scoped(Func<Tensor> f)
    {
        using var scope = torch.NewDisposeScope();
        return f().MoveToOuterDisposeScope();
    }

    /// <summary><see cref="Scoped(Func{Tensor})"/> for a sparse result.</summary>
    public static SparseTensor Scoped(Func<SparseTensor> f)
    {
        using var scope = torch.NewDisposeScope();
        return f().MoveToOuterDisposeScope();
    }

    /// <summary>Casts <paramref name="x"/> to <paramref name="dtype"/> when it differs.</summary>
    public static Tensor As(this Tensor x, ScalarType dtype) => x.dtype == dtype ? x : x.to(dtype);
}

/// <summary>TRELLIS's <c>LayerNorm32</c> (an <c>nn.LayerNorm</c> computed in at least float32), optionally affine.</summary>
internal sealed class LayerNorm32 : nn.Module
{
#pragma warning disable IDE1006
    public Parameter? weight;
    public Parameter? bias;
#pragma warning restore IDE1006
    private readonly double _eps;

    public LayerNorm32(long channels, bool affine, double eps, ScalarType dtype, Device? device) : base(nameof(LayerNorm32))
    {
        _eps = eps;
        if (affine)
        {
            weight = new Parameter(torch.ones(new[] { channels }, dtype: dtype, device: device));
            bias = new Parameter(torch.zeros(new[] { channels }, dtype: dtype, device: device));
        }
        RegisterComponents();
    }

    public Tensor Forward(Tensor x) => Precision.LayerNorm(x, weight, bias, _eps);
}

/// <summary>
/// TRELLIS's <c>SparseGroupNorm32</c>: a GroupNorm per sample over all of its voxels (channels split into groups),
/// computed in at least float32, biased variance, affine weight/bias per channel.
/// </summary>
internal sealed class SparseGroupNorm32 : nn.Module
{
#pragma warning disable IDE1006
    public Parameter? weight;
    public Parameter? bias;
#pragma warning restore IDE1006
    private readonly double _eps;

    public SparseGroupNorm32(long numGroups, long channels, double eps = 1e-5, bool affine = true, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(SparseGroupNorm32))
    {
        if (numGroups < 1 || channels % numGroups != 0)
            throw new ArgumentException($"channels ({channels}) must be a multiple of num_groups ({numGroups}).", nameof(numGroups));
        NumGroups = numGroups;
        Channels = channels;
        _eps = eps;
        if (affine)
        {
            weight = new Parameter(torch.ones(new[] { channels }, dtype: dtype, device: device));
            bias = new Parameter(torch.zeros(new[] { channels }, dtype: dtype, device: device));
        }
        RegisterComponents();
    }

    public long NumGroups { get; }
    public long Channels { get; }

    public SparseTensor Forward(SparseTensor x)
    {
        var f = x.Feats;
        if (f.dim() != 2 || f.shape[1] != Channels)
            throw new ArgumentException($"SparseGroupNorm32 expects feats [N, {Channels}], found [{string.Join(", ", f.shape)}].", nameof(x));
        var ct = Precision.AtLeastFloat32(f.dtype);
        long n = f.shape[0], g = NumGroups, cg = Channels / g;
        var xf = f.As(ct).view(n, g, cg);
        var idx = x.Coordinates.SampleIndex.On(f.device);
        var counts = torch.tensor(x.Coordinates.RowCounts.Select(c => (double)(c * cg)).ToArray(), dtype: ct, device: f.device).clamp_min(1).unsqueeze(1);
        var zeros = torch.zeros(new[] { x.BatchSize, g }, dtype: ct, device: f.device);
        var mean = zeros.index_add(0, idx, xf.sum(2), 1.0) / counts;                 // [B, G]
        var centered = xf - mean.index_select(0, idx).unsqueeze(2);              // [N, G, cg]
        var variance = zeros.index_add(0, idx, (centered * centered).sum(2), 1.0) / counts;
        var y = centered * (variance + _eps).rsqrt().index_select(0, idx).unsqueeze(2);
        y = y.view(n, Channels);
        if (weight is not null) y = y * weight.As(ct);
        if (bias is not null) y = y + bias.As(ct);
        return x.ReplaceFeats(y.As(f.dtype));
    }
}
