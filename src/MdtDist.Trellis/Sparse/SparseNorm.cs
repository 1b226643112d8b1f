using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

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
