using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>
/// One rendered frame: colour <c>[H, W, 3]</c> (linear values, background composited in; not clamped), alpha
/// <c>[H, W]</c> (coverage in [0, 1]: 1 − the final transmittance for Gaussians, the covered fraction of sub-samples for
/// meshes) and, for meshes, depth <c>[H, W]</c> (camera z, 0 where nothing was hit).
/// </summary>
/// <remarks>The instance owns its tensors (detached from dispose scopes); dispose it to free them.</remarks>
public sealed class RenderedImage : IDisposable
{
    internal RenderedImage(Tensor color, Tensor alpha, Tensor? depth)
    {
        Color = color.DetachFromDisposeScope();
        Alpha = alpha.DetachFromDisposeScope();
        Depth = depth?.DetachFromDisposeScope();
    }

    /// <summary>Colour <c>[H, W, 3]</c>.</summary>
    public Tensor Color { get; }

    /// <summary>Coverage <c>[H, W]</c> in [0, 1].</summary>
    public Tensor Alpha { get; }

    /// <summary>Camera depth <c>[H, W]</c> (meshes only; 0 where empty), or null.</summary>
    public Tensor? Depth { get; }

    /// <summary>Image height in pixels.</summary>
    public int Height => (int)Color.shape[0];

    /// <summary>Image width in pixels.</summary>
    public int Width => (int)Color.shape[1];

    /// <summary>The colour as an 8-bit RGB image (TRELLIS's conversion: <c>clip(x·255, 0, 255)</c>, truncated to uint8).</summary>
    public SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24> ToImage() => PreviewImages.ToImage(Color);

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        Color.Dispose();
        Alpha.Dispose();
        Depth?.Dispose();
    }
}
