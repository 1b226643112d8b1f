using MdtDist.Trellis.Representations;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Rendering;

/// <summary>Settings of <see cref="Preview.SaveSample"/>.</summary>
public sealed record SamplePreviewOptions
{
    /// <summary>Side of each still in the grid, in pixels.</summary>
    public int Resolution { get; init; } = 256;

    /// <summary>Named cameras (<see cref="TrellisCamera.Names"/>) of the grid's columns.</summary>
    public IReadOnlyList<string> Views { get; init; } = new[] { "front", "right", "back", "left", "iso" };

    /// <summary>Frames of the turntable (0: no turntable).</summary>
    public int TurntableFrames { get; init; } = 36;

    /// <summary>Side of the turntable frames, in pixels.</summary>
    public int TurntableResolution { get; init; } = 256;

    /// <summary>Display time of each turntable frame, in milliseconds.</summary>
    public int FrameDelayMs { get; init; } = 80;
}

/// <summary>
/// One-call previews: render Gaussians, a mesh or a voxel set from a named camera (<see cref="TrellisCamera.Named"/>) to
/// an ImageSharp image, turntables, and the per-sample preview files (PNG grid + GIF turntable).
/// </summary>
/// <remarks>For tensors instead of images, or full control, use <see cref="GaussianRasterizer"/> and <see cref="MeshRasterizer"/>.</remarks>
public static class Preview
{
    /// <summary>Renders Gaussians from a named camera with TRELLIS's preview settings at <paramref name="resolution"/>².</summary>
    public static Image<Rgb24> Render(Gaussians gaussians, string camera = "iso", int resolution = 512) =>
        Render(gaussians, TrellisCamera.Named(camera), resolution);

    /// <summary>Renders Gaussians from <paramref name="camera"/> with TRELLIS's preview settings at <paramref name="resolution"/>².</summary>
    public static Image<Rgb24> Render(Gaussians gaussians, TrellisCamera camera, int resolution = 512)
    {
        using var r = GaussianRasterizer.Render(gaussians, camera, new GaussianRenderOptions { Resolution = resolution });
        return r.ToImage();
    }

    /// <summary>Renders a mesh (vertex colours, headlight shading unless <paramref name="shading"/> says otherwise) from a named camera.</summary>
    public static Image<Rgb24> Render(Mesh mesh, string camera = "iso", int resolution = 512, MeshShading shading = MeshShading.Lambert) =>
        Render(mesh, TrellisCamera.Named(camera), resolution, shading);

    /// <summary>Renders a mesh from <paramref name="camera"/>.</summary>
    public static Image<Rgb24> Render(Mesh mesh, TrellisCamera camera, int resolution = 512, MeshShading shading = MeshShading.Lambert)
    {
        using var r = MeshRasterizer.Render(mesh, camera, new MeshRenderOptions { Resolution = resolution, Shading = shading });
        return r.ToImage();
    }

    /// <summary>
    /// Renders occupied voxels (integer <c>[N, 3]</c> indices of a <paramref name="gridResolution"/>³ grid filling
    /// <c>[-0.5, 0.5]³</c>, optional colours <c>[N, 3]</c>) as shaded cubes from a named camera (see <see cref="VoxelMesh"/>).
    /// </summary>
    public static Image<Rgb24> RenderVoxels(Tensor coordinates, int gridResolution, string camera = "iso", int resolution = 512, Tensor? colors = null)
    {
        using var mesh = VoxelMesh.FromCoordinates(coordinates, gridResolution, colors);
        return Render(mesh, camera, resolution);
    }

    /// <summary>TRELLIS's <c>render_video</c> orbit (<see cref="TrellisCamera.Turntable"/>) of Gaussians.</summary>
    public static IReadOnlyList<Image<Rgb24>> Turntable(Gaussians gaussians, int frames = 36, int resolution = 256,
        IProgress<int>? progress = null, CancellationToken cancellationToken = default) =>
        RenderAll(TrellisCamera.Turntable(frames), cam =>
        {
            using var r = GaussianRasterizer.Render(gaussians, cam, new GaussianRenderOptions { Resolution = resolution }, cancellationToken);
            return r.ToImage();
        }, progress, cancellationToken);

    /// <summary>TRELLIS's <c>render_video</c> orbit (<see cref="TrellisCamera.Turntable"/>) of a mesh.</summary>
    public static IReadOnlyList<Image<Rgb24>> Turntable(Mesh mesh, int frames = 36, int resolution = 256, MeshShading shading = MeshShading.Lambert,
        IProgress<int>? progress = null, CancellationToken cancellationToken = default) =>
        RenderAll(TrellisCamera.Turntable(frames), cam =>
        {
            using var r = MeshRasterizer.Render(mesh, cam, new MeshRenderOptions { Resolution = resolution, Shading = shading }, cancellationToken);
            return r.ToImage();
        }, progress, cancellationToken);

    /// <summary>
    /// Writes the preview of one generated sample: <c>{pathPrefix}_preview.png</c>, a grid with one row per given
    /// representation (Gaussians, then mesh) and one labelled column per view, and, unless
    /// <see cref="SamplePreviewOptions.TurntableFrames"/> is 0, <c>{pathPrefix}_turntable.gif</c> (Gaussians when given,
    /// else the mesh). Returns the paths written. Each file is written atomically.
    /// </summary>
    /// <exception cref="ArgumentException">Neither <paramref name="gaussians"/> nor <paramref name="mesh"/> is given.</exception>
    public static IReadOnlyList<string> SaveSample(string pathPrefix, Gaussians? gaussians, Mesh? mesh, SamplePreviewOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(pathPrefix);
        if (gaussians is null && mesh is null) throw new ArgumentException("give Gaussians, a mesh or both", nameof(gaussians));
        options ??= new SamplePreviewOptions();
        if (options.Views is null || options.Views.Count == 0) throw new ArgumentException("Views must name at least one camera", nameof(options));
        if (options.TurntableFrames < 0) throw new ArgumentException($"TurntableFrames must be >= 0; found {options.TurntableFrames}", nameof(options));
        var cameras = options.Views.Select(TrellisCamera.Named).ToList();

        var cells = new List<Image<Rgb24>>();
        var labels = new List<string?>();
        try
        {
            if (gaussians is not null)
                foreach (var (cam, name) in cameras.Zip(options.Views))
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    cells.Add(Render(gaussians, cam, options.Resolution));
                    labels.Add(mesh is null ? name : "gs " + name);
                }
            if (mesh is not null)
                foreach (var (cam, name) in cameras.Zip(options.Views))
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    cells.Add(Render(mesh, cam, options.Resolution));
                    labels.Add(gaussians is null ? name : "mesh " + name);
                }
            var written = new List<string>();
            using (var grid = PreviewImages.Grid(cells, cameras.Count, labels))
            {
                var png = pathPrefix + "_preview.png";
                PreviewImages.SavePng(grid, png);
                written.Add(png);
            }
            if (options.TurntableFrames > 0)
            {
                var frames = gaussians is not null
                    ? Turntable(gaussians, options.TurntableFrames, options.TurntableResolution, null, cancellationToken)
                    : Turntable(mesh!, options.TurntableFrames, options.TurntableResolution, MeshShading.Lambert, null, cancellationToken);
                try
                {
                    var gif = pathPrefix + "_turntable.gif";
                    PreviewImages.SaveGif(frames, gif, options.FrameDelayMs);
                    written.Add(gif);
                }
                finally
                {
                    foreach (var f in frames) f.Dispose();
                }
            }
            return written;
        }
        finally
        {
            foreach (var c in cells) c.Dispose();
        }
    }

    private static IReadOnlyList<Image<Rgb24>> RenderAll(IReadOnlyList<TrellisCamera> cameras, Func<TrellisCamera, Image<Rgb24>> render,
        IProgress<int>? progress, CancellationToken ct)
    {
        var frames = new List<Image<Rgb24>>(cameras.Count);
        try
        {
            for (int i = 0; i < cameras.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                frames.Add(render(cameras[i]));
                progress?.Report(i + 1);
            }
            return frames;
        }
        catch
        {
            foreach (var f in frames) f.Dispose();
            throw;
        }
    }
}
