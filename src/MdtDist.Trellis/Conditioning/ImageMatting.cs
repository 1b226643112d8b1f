using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MdtDist.Trellis.Conditioning;

/// <summary>Background removal: turns an opaque picture into an RGBA cut-out of its foreground object.</summary>
public interface IImageMatting
{
    /// <summary>Returns a new RGBA image of the same size whose alpha is the foreground matte.</summary>
    Image<Rgba32> RemoveBackground(Image<Rgba32> image);
}

/// <summary>
/// A salient-object matting network in ONNX format run with ONNX Runtime, in rembg's U²-Net convention (the model
/// TRELLIS uses): the picture resized to <see cref="InputSize"/>² (Lanczos-3), divided by its largest channel value,
/// ImageNet-normalised, fed as <c>[1, 3, S, S]</c> float32 to the first input; the first output's first channel
/// <c>[1, 1, S, S]</c> min-max normalised is the matte, resized back to the picture (Lanczos-3); the cut-out is the
/// picture composited over transparent black with that matte (rembg's default <c>naive_cutout</c>).
/// </summary>
public sealed class OnnxMatting : IImageMatting, IDisposable
{
    private readonly InferenceSession _session;
    private readonly string _input;
    private readonly string _path;

    /// <summary>Loads an ONNX model (e.g. rembg's <c>u2net.onnx</c>).</summary>
    /// <param name="modelPath">The <c>.onnx</c> file.</param>
    /// <param name="inputSize">The side the network expects (320 for U²-Net).</param>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">ONNX Runtime cannot load it, or it has no float image input / output.</exception>
    public OnnxMatting(string modelPath, int inputSize = 320)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelPath);
        if (!File.Exists(modelPath)) throw new FileNotFoundException($"matting model '{modelPath}' does not exist.", modelPath);
        if (inputSize < 1) throw new ArgumentException($"inputSize must be positive, got {inputSize}.", nameof(inputSize));
        _path = modelPath;
        InputSize = inputSize;
        try
        {
            _session = new InferenceSession(modelPath);
        }
        catch (OnnxRuntimeException e)
        {
            throw new InvalidDataException($"matting model '{modelPath}' is not a valid ONNX model: {e.Message}", e);
        }
        if (_session.InputMetadata.Count < 1 || _session.OutputMetadata.Count < 1)
        {
            _session.Dispose();
            throw new InvalidDataException($"matting model '{modelPath}' needs an image input and a matte output.");
        }
        var input = _session.InputMetadata.First();
        if (input.Value.ElementType != typeof(float) || input.Value.Dimensions.Length != 4)
        {
            _session.Dispose();
            throw new InvalidDataException($"matting model '{modelPath}': input '{input.Key}' must be a float32 [1, 3, H, W] tensor, found {input.Value.ElementType.Name} of rank {input.Value.Dimensions.Length}.");
        }
        _input = input.Key;
    }

    /// <summary>The network's input side.</summary>
    public int InputSize { get; }

    /// <inheritdoc />
    public Image<Rgba32> RemoveBackground(Image<Rgba32> image)
    {
        ArgumentNullException.ThrowIfNull(image);
        int s = InputSize;
        using var small = image.CloneAs<Rgb24>();
        small.Mutate(c => c.Resize(new ResizeOptions { Size = new Size(s, s), Sampler = KnownResamplers.Lanczos3, Mode = ResizeMode.Stretch }));
        var x = new DenseTensor<float>(new[] { 1, 3, s, s });
        float max = 1e-6f;
        small.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < s; y++)
                foreach (var p in acc.GetRowSpan(y))
                    max = Math.Max(max, Math.Max(p.R, Math.Max(p.G, p.B)));
        });
        small.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < s; y++)
            {
                var row = acc.GetRowSpan(y);
                for (int xx = 0; xx < s; xx++)
                {
                    x[0, 0, y, xx] = (float)((row[xx].R / max - ImageNet.Mean[0]) / ImageNet.Std[0]);
                    x[0, 1, y, xx] = (float)((row[xx].G / max - ImageNet.Mean[1]) / ImageNet.Std[1]);
                    x[0, 2, y, xx] = (float)((row[xx].B / max - ImageNet.Mean[2]) / ImageNet.Std[2]);
                }
            }
        });
        float[] matte;
        int mh, mw;
        using (var results = _session.Run(new[] { NamedOnnxValue.CreateFromTensor(_input, x) }))
        {
            var first = results.First();
            if (first.Value is not Tensor<float> pred || pred.Dimensions.Length != 4)
                throw new InvalidDataException($"matting model '{_path}': output '{first.Name}' is not a float32 [1, C, H, W] tensor.");
            mh = pred.Dimensions[2];
            mw = pred.Dimensions[3];
            matte = new float[mh * mw];
            for (int y = 0; y < mh; y++)
                for (int xx = 0; xx < mw; xx++)
                    matte[y * mw + xx] = pred[0, 0, y, xx];
        }
        float lo = matte.Min(), hi = matte.Max();
        float range = hi - lo > 0 ? hi - lo : 1;
        using var mask = new Image<L8>(mw, mh);
        mask.ProcessPixelRows(acc =>
        {
            for (int y = 0; y < mh; y++)
            {
                var row = acc.GetRowSpan(y);
                for (int xx = 0; xx < mw; xx++) row[xx] = new L8((byte)Math.Clamp((int)((matte[y * mw + xx] - lo) / range * 255f), 0, 255));
            }
        });
        mask.Mutate(c => c.Resize(new ResizeOptions { Size = new Size(image.Width, image.Height), Sampler = KnownResamplers.Lanczos3, Mode = ResizeMode.Stretch }));
        var result = new Image<Rgba32>(image.Width, image.Height);
        image.ProcessPixelRows(mask, result, (src, m, dst) =>
        {
            for (int y = 0; y < src.Height; y++)
            {
                var sr = src.GetRowSpan(y);
                var mr = m.GetRowSpan(y);
                var dr = dst.GetRowSpan(y);
                for (int xx = 0; xx < sr.Length; xx++)
                {
                    int a = mr[xx].PackedValue;
                    dr[xx] = new Rgba32((byte)(sr[xx].R * a / 255), (byte)(sr[xx].G * a / 255), (byte)(sr[xx].B * a / 255), (byte)a);
                }
            }
        });
        return result;
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();
}
