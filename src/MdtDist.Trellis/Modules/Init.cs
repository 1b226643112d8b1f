using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// Building blocks of network construction that leave no tensor handle alive. TorchSharp's in-place <c>zero_()</c>
/// returns a fresh wrapper of the same tensor, and its <c>Conv3d</c> constructor leaves the wrappers of its
/// initialisation behind; undisposed, each counts as a live tensor until the garbage collector finalises it (24 per
/// tiny <see cref="Models.SLatFlowModel"/> before this existed). Both run here inside a dispose scope, which frees only
/// those wrappers (the parameters themselves are detached from the scope by TorchSharp when they are registered).
/// </summary>
internal static class Init
{
    /// <summary>Sets <paramref name="t"/> to zero in place (without autograd); a meta tensor or null is left alone.</summary>
    public static void Zero(Tensor? t)
    {
        if (t is null || t.is_meta) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        t.zero_();
    }

    /// <summary><c>nn.Conv3d</c> with PyTorch's default initialisation.</summary>
    public static Conv3d Conv3d(long inChannels, long outChannels, long kernelSize, long stride = 1, long padding = 0,
        ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        return nn.Conv3d(inChannels, outChannels, kernelSize, stride: stride, padding: padding, device: device, dtype: dtype);
    }
}
