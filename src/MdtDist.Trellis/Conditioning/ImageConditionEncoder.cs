using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using MdtDist.Trellis.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// Turns pictures into TRELLIS condition tokens, as <c>TrellisImageTo3DPipeline.preprocess_image</c> + <c>encode_image</c>:
/// <see cref="ImagePreprocessor"/> (alpha crop, 518² Lanczos, premultiply, ImageNet normalisation), then
/// <see cref="Dinov2Model"/> (layer-normed <c>x_prenorm</c> tokens). One image gives <c>[1, 1374, 1024]</c> with DINOv2-L.
/// The negative condition TRELLIS uses with these tokens is all zeros of the same shape.
/// </summary>
public sealed class ImageConditionEncoder : IDisposable, ITrellisConditioner<string>, ITrellisConditioner<IReadOnlyList<string>>
{
    private readonly bool _ownsModel;

    /// <summary>Wraps a loaded DINOv2 (and disposes it with the encoder when <paramref name="ownsModel"/>).</summary>
    public ImageConditionEncoder(Dinov2Model model, ImagePreprocessor? preprocessor = null, bool ownsModel = true)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        Preprocessor = preprocessor ?? new ImagePreprocessor();
        if (Preprocessor.Options.Size % model.Config.PatchSize != 0)
            throw new ArgumentException($"preprocessor size {Preprocessor.Options.Size} is not a multiple of the patch size {model.Config.PatchSize}.", nameof(preprocessor));
        _ownsModel = ownsModel;
        Model.eval();
    }

    /// <summary>
    /// Loads the condition model <paramref name="name"/> (TRELLIS's <c>image_cond_model</c>, <c>dinov2_vitl14_reg</c>)
    /// from a local checkpoint (torch.hub <c>.pth</c> or <c>.safetensors</c>; null: <see cref="Dinov2Checkpoint.DefaultPath"/>).
    /// </summary>
    /// <exception cref="NotSupportedException">An unknown condition model name.</exception>
    public static ImageConditionEncoder Load(string name, string? checkpointPath, ScalarType dtype = ScalarType.Float32, Device? device = null,
        ImagePreprocessOptions? options = null, string? modelFolder = null)
    {
        var config = Dinov2Config.FromHubName(name);
        var path = checkpointPath ?? Dinov2Checkpoint.DefaultPath(modelFolder);
        var model = Dinov2Checkpoint.Load(path, config, dtype, device);
        return new ImageConditionEncoder(model, new ImagePreprocessor(options));
    }

    /// <summary>
    /// The condition model a TRELLIS model folder names: <c>image_cond_model</c> of its <c>pipeline.json</c>
    /// (<c>dinov2_vitl14_reg</c> for TRELLIS-image-large), loaded from <paramref name="checkpointPath"/> or, when null, from
    /// <see cref="Dinov2Checkpoint.DefaultPath"/> (MDTDIST_DINOV2, the torch.hub cache, then the model folder itself).
    /// </summary>
    /// <exception cref="FileNotFoundException">No pipeline.json or no checkpoint (the message lists the places searched).</exception>
    /// <exception cref="InvalidDataException">pipeline.json is malformed or names no image condition model.</exception>
    public static ImageConditionEncoder FromModelFolder(string modelFolder, string? checkpointPath = null, ScalarType dtype = ScalarType.Float32,
        Device? device = null, ImagePreprocessOptions? options = null)
    {
        var name = TrellisPipelineConfig.ReadFolder(modelFolder, requireModels: false).ImageConditionModel
            ?? throw new InvalidDataException($"'{Path.Combine(modelFolder, "pipeline.json")}' names no \"image_cond_model\" (is it an image-conditioned TRELLIS model?).");
        return Load(name, checkpointPath, dtype, device, options, modelFolder);
    }

    /// <summary>The DINOv2 network.</summary>
    public Dinov2Model Model { get; }

    /// <summary>The preprocessing.</summary>
    public ImagePreprocessor Preprocessor { get; }

    /// <summary>Width of the tokens (the flows' <c>cond_channels</c>).</summary>
    public long TokenWidth => Model.Config.EmbedDim;

    /// <summary>Encodes image files: <c>[N, L, E]</c> in the model's dtype, one row per file (errors name the file).</summary>
    public Tensor EncodeFiles(IReadOnlyList<string> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        if (paths.Count == 0) throw new ArgumentException("at least one image is needed.", nameof(paths));
        var pre = new List<Image<Rgb24>>();
        try
        {
            foreach (var p in paths)
            {
                using var img = Preprocessor.Load(p);
                pre.Add(Preprocessor.Preprocess(img, $"image '{p}'"));
            }
            return EncodePreprocessed(pre);
        }
        finally
        {
            foreach (var i in pre) i.Dispose();
        }
    }

    /// <summary>Encodes RGBA pictures (preprocessed here): <c>[N, L, E]</c>.</summary>
    public Tensor Encode(IReadOnlyList<Image<Rgba32>> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        var pre = new List<Image<Rgb24>>();
        try
        {
            for (int i = 0; i < images.Count; i++) pre.Add(Preprocessor.Preprocess(images[i], $"images[{i}]"));
            return EncodePreprocessed(pre);
        }
        finally
        {
            foreach (var i in pre) i.Dispose();
        }
    }

    /// <summary>Encodes images already preprocessed (e.g. TRELLIS dataset renders cropped by the dataset): <c>[N, L, E]</c>.</summary>
    public Tensor EncodePreprocessed(IReadOnlyList<Image<Rgb24>> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("at least one image is needed.", nameof(images));
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var rows = new List<Tensor>();
        foreach (var img in images)
        {
            using var inner = torch.NewDisposeScope();
            var x = ImagePreprocessor.ToTensor(new[] { img }, Model.DType, Model.Device);
            rows.Add(Model.forward(x).MoveToOuterDisposeScope());
        }
        return torch.cat(rows, 0).MoveToOuterDisposeScope();
    }

    /// <summary>One picture file → <see cref="TrellisCondition"/> with tokens <c>[1, L, E]</c> and zero negative tokens.</summary>
    public TrellisCondition Encode(string input) => TrellisCondition.FromImageFeatures(EncodeFiles(new[] { input }));

    /// <summary>
    /// N picture files → tokens <c>[N, L, E]</c> and zero negative tokens: N views of one object for a multi-image run
    /// (<c>TrellisRunOptions.MultiImage</c>), or one condition per sample.
    /// </summary>
    public TrellisCondition Encode(IReadOnlyList<string> input) => TrellisCondition.FromImageFeatures(EncodeFiles(input));

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsModel) Model.Dispose();
    }
}
