using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Modules;

/// <summary>The normalisation of the structure VAE: "layer" (<see cref="ChannelLayerNorm32"/>) or "group" (<see cref="GroupNorm32"/> with 32 groups).</summary>
internal static class VaeNorm
{
    public static nn.Module<Tensor, Tensor> Create(string normType, long channels, ScalarType dtype, Device? device) => normType switch
    {
        "layer" => new ChannelLayerNorm32(channels, 1e-5, dtype, device),
        "group" => new GroupNorm32(32, channels, 1e-5, dtype, device),
        _ => throw new ArgumentException($"norm_type must be 'layer' or 'group', got '{normType}'.", nameof(normType)),
    };
}

/// <summary>Every Conv3d / Linear below a module (TRELLIS's fp16 torso conversion converts exactly these).</summary>
internal static class TorsoLayers
{
    public static IEnumerable<nn.Module> ConvAndLinear(nn.Module root) =>
        root.modules().Where(m => m is Conv3d or Linear);
}

/// <summary>
/// TRELLIS's <c>ResBlock3d</c>: <c>h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))); return h + skip(x)</c>, with
/// 3³ convolutions (padding 1) and a 1³ <c>skip_connection</c> only when the channel count changes.
/// </summary>
internal sealed class ResBlock3d : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly nn.Module<Tensor, Tensor> norm1;
    private readonly nn.Module<Tensor, Tensor> norm2;
    private readonly Conv3d conv1;
    private readonly Conv3d conv2;
    private readonly Conv3d? skip_connection;
#pragma warning restore IDE1006

    public ResBlock3d(long channels, long? outChannels, string normType, ScalarType dtype, Device? device) : base(nameof(ResBlock3d))
    {
        long oc = outChannels ?? channels;
        norm1 = VaeNorm.Create(normType, channels, dtype, device);
        norm2 = VaeNorm.Create(normType, oc, dtype, device);
        conv1 = Init.Conv3d(channels, oc, 3, padding: 1, dtype: dtype, device: device);
        conv2 = Init.Conv3d(oc, oc, 3, padding: 1, dtype: dtype, device: device);
        if (oc != channels) skip_connection = Init.Conv3d(channels, oc, 1, dtype: dtype, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = norm1.forward(x);
        h = F.silu(h);
        h = conv1.forward(h);
        h = norm2.forward(h);
        h = F.silu(h);
        h = conv2.forward(h);
        h = h + (skip_connection is null ? x : skip_connection.forward(x));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>TRELLIS's <c>DownsampleBlock3d</c>: "conv" = Conv3d(in, out, 2, stride 2) (<c>conv</c>); "avgpool" = avg_pool3d(2).</summary>
internal sealed class DownsampleBlock3d : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv3d? conv;
#pragma warning restore IDE1006

    public DownsampleBlock3d(long inChannels, long outChannels, string mode, ScalarType dtype, Device? device) : base(nameof(DownsampleBlock3d))
    {
        if (mode == "conv") conv = Init.Conv3d(inChannels, outChannels, 2, stride: 2, dtype: dtype, device: device);
        else if (mode == "avgpool")
        {
            if (inChannels != outChannels) throw new ArgumentException($"avgpool downsampling needs in_channels == out_channels, got {inChannels} and {outChannels}.", nameof(outChannels));
        }
        else throw new ArgumentException($"downsample mode must be 'conv' or 'avgpool', got '{mode}'.", nameof(mode));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => conv is not null ? conv.forward(x) : F.avg_pool3d(x, new long[] { 2, 2, 2 });
}

/// <summary>
/// TRELLIS's <c>UpsampleBlock3d</c>: "conv" = Conv3d(in, out·8, 3, padding 1) (<c>conv</c>) then <see cref="Spatial.PixelShuffle3d"/>(2);
/// "nearest" = nearest-neighbour ×2.
/// </summary>
internal sealed class UpsampleBlock3d : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv3d? conv;
#pragma warning restore IDE1006

    public UpsampleBlock3d(long inChannels, long outChannels, string mode, ScalarType dtype, Device? device) : base(nameof(UpsampleBlock3d))
    {
        if (mode == "conv") conv = Init.Conv3d(inChannels, outChannels * 8, 3, padding: 1, dtype: dtype, device: device);
        else if (mode == "nearest")
        {
            if (inChannels != outChannels) throw new ArgumentException($"nearest upsampling needs in_channels == out_channels, got {inChannels} and {outChannels}.", nameof(outChannels));
        }
        else throw new ArgumentException($"upsample mode must be 'conv' or 'nearest', got '{mode}'.", nameof(mode));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (conv is null) return F.interpolate(x, scale_factor: new[] { 2.0, 2.0, 2.0 }, mode: InterpolationMode.Nearest);
        using var scope = torch.NewDisposeScope();
        return Spatial.PixelShuffle3d(conv.forward(x), 2).MoveToOuterDisposeScope();
    }
}
