using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// TRELLIS's <c>LayerNorm32</c>: a LayerNorm over the last axis computed in at least float32 (float64 stays float64),
/// optionally with an affine weight and bias (state-dict names <c>weight</c>, <c>bias</c>), cast back to the input dtype.
/// </summary>
internal sealed class LayerNorm32 : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Parameter? weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006

    public LayerNorm32(long channels, bool elementwiseAffine, double eps, ScalarType dtype, Device? device) : base(nameof(LayerNorm32))
    {
        Channels = channels;
        Eps = eps;
        if (elementwiseAffine)
        {
            weight = new Parameter(torch.ones(channels, dtype: dtype, device: device));
            bias = new Parameter(torch.zeros(channels, dtype: dtype, device: device));
        }
        RegisterComponents();
    }

    public long Channels { get; }
    public double Eps { get; }

    public override Tensor forward(Tensor x)
    {
        if (x.shape[^1] != Channels)
            throw new ArgumentException($"LayerNorm32 over {Channels} channels got input {Precision.Shape(x.shape)}.", nameof(x));
        using var scope = torch.NewDisposeScope();
        return Precision.LayerNorm(x, weight, bias, Eps).MoveToOuterDisposeScope();
    }
}

/// <summary>TRELLIS's <c>ChannelLayerNorm32</c>: <see cref="LayerNorm32"/> over the channel axis (dim 1) of a channels-first tensor.</summary>
internal sealed class ChannelLayerNorm32 : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter weight;
    private readonly Parameter bias;
#pragma warning restore IDE1006
    private readonly long[] _shape;

    public ChannelLayerNorm32(long channels, double eps, ScalarType dtype, Device? device) : base(nameof(ChannelLayerNorm32))
    {
        Eps = eps;
        _shape = new[] { channels };
        weight = new Parameter(torch.ones(channels, dtype: dtype, device: device));
        bias = new Parameter(torch.zeros(channels, dtype: dtype, device: device));
        RegisterComponents();
    }

    public double Eps { get; }

    public override Tensor forward(Tensor x)
    {
        int dim = (int)x.dim();
        var toLast = new long[dim];
        toLast[0] = 0;
        for (int i = 2; i < dim; i++) toLast[i - 1] = i;
        toLast[dim - 1] = 1;
        var toFirst = new long[dim];
        toFirst[0] = 0;
        toFirst[1] = dim - 1;
        for (int i = 1; i < dim - 1; i++) toFirst[i + 1] = i;
        var cd = Precision.AtLeastFloat32(x.dtype);
        using var scope = torch.NewDisposeScope();
        var h = x.permute(toLast).contiguous();
        h = F.layer_norm(h.As(cd), _shape, weight.As(cd), bias.As(cd), Eps);
        h = h.As(x.dtype);
        return h.permute(toFirst).contiguous().MoveToOuterDisposeScope();
    }
}

/// <summary>TRELLIS's <c>GroupNorm32</c>: GroupNorm computed in at least float32, cast back to the input dtype.</summary>
internal sealed class GroupNorm32 : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter weight;
    private readonly Parameter bias;
#pragma warning restore IDE1006

    public GroupNorm32(long numGroups, long channels, double eps, ScalarType dtype, Device? device) : base(nameof(GroupNorm32))
    {
        if (channels % numGroups != 0)
            throw new ArgumentException($"GroupNorm: {channels} channels are not divisible into {numGroups} groups.", nameof(channels));
        NumGroups = numGroups;
        Eps = eps;
        weight = new Parameter(torch.ones(channels, dtype: dtype, device: device));
        bias = new Parameter(torch.zeros(channels, dtype: dtype, device: device));
        RegisterComponents();
    }

    public long NumGroups { get; }
    public double Eps { get; }

    public override Tensor forward(Tensor x)
    {
        var cd = Precision.AtLeastFloat32(x.dtype);
        using var scope = torch.NewDisposeScope();
        var y = F.group_norm(x.As(cd), NumGroups, weight.As(cd), bias.As(cd), Eps);
        return y.As(x.dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// TRELLIS's <c>MultiHeadRMSNorm</c> for queries / keys <c>[..., H, D]</c>:
/// <c>normalize(x, dim=-1, eps=1e-12) · gamma[H, D] · sqrt(D)</c>, computed in at least float32. Parameter: <c>gamma</c>.
/// </summary>
internal sealed class MultiHeadRMSNorm : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter gamma;
#pragma warning restore IDE1006

    public MultiHeadRMSNorm(long dim, long heads, ScalarType dtype, Device? device) : base(nameof(MultiHeadRMSNorm))
    {
        Scale = Math.Sqrt(dim);
        gamma = new Parameter(torch.ones(new[] { heads, dim }, dtype: dtype, device: device));
        RegisterComponents();
    }

    /// <summary>sqrt(D).</summary>
    public double Scale { get; }

    public override Tensor forward(Tensor x)
    {
        var cd = Precision.AtLeastFloat32(x.dtype);
        using var scope = torch.NewDisposeScope();
        var n = F.normalize(x.As(cd), p: 2.0, dim: -1, eps: 1e-12);
        var y = n * gamma.As(cd) * Scale;
        return y.As(x.dtype).MoveToOuterDisposeScope();
    }
}
