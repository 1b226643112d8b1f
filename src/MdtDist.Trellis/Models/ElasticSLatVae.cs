using MdtDist.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// TRELLIS's <c>ElasticSLatEncoder</c> (its VAE training configs): <see cref="SLatEncoder"/> with elastic memory — once a
/// <see cref="MemoryController"/> is registered, each training forward with gradients recomputes the first transformer
/// blocks in backward as the controller's ratio for the number of input voxels says. Same weights, outputs and gradients.
/// </summary>
public sealed class ElasticSLatEncoder : SLatEncoder, IElasticModule
{
    /// <summary>TRELLIS's class name.</summary>
    public const string ClassName = "ElasticSLatEncoder";

    /// <summary>Builds the encoder (see <see cref="SLatEncoder(SLatEncoderConfig, ScalarType, Device?)"/>).</summary>
    public ElasticSLatEncoder(SLatEncoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(config, dtype, device) { }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <inheritdoc />
    public void RegisterMemoryController(MemoryController? controller) => SetMemoryController(controller);
}

/// <summary>
/// TRELLIS's <c>ElasticSLatGaussianDecoder</c>: <see cref="SLatGaussianDecoder"/> with elastic memory (see
/// <see cref="ElasticSLatEncoder"/>).
/// </summary>
public sealed class ElasticSLatGaussianDecoder : SLatGaussianDecoder, IElasticModule
{
    /// <summary>TRELLIS's class name.</summary>
    public const string ClassName = "ElasticSLatGaussianDecoder";

    /// <summary>Builds the decoder (see <see cref="SLatGaussianDecoder(SLatGaussianDecoderConfig, ScalarType, Device?)"/>).</summary>
    public ElasticSLatGaussianDecoder(SLatGaussianDecoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(config, dtype, device) { }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <inheritdoc />
    public void RegisterMemoryController(MemoryController? controller) => SetMemoryController(controller);
}

/// <summary>
/// TRELLIS's <c>ElasticSLatMeshDecoder</c>: <see cref="SLatMeshDecoder"/> with elastic memory on its transformer blocks
/// (see <see cref="ElasticSLatEncoder"/>; the subdivision blocks are not part of TRELLIS's elastic plan either).
/// </summary>
public sealed class ElasticSLatMeshDecoder : SLatMeshDecoder, IElasticModule
{
    /// <summary>TRELLIS's class name.</summary>
    public const string ClassName = "ElasticSLatMeshDecoder";

    /// <summary>Builds the decoder (see <see cref="SLatMeshDecoder(SLatMeshDecoderConfig, ScalarType, Device?)"/>).</summary>
    public ElasticSLatMeshDecoder(SLatMeshDecoderConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(config, dtype, device) { }

    /// <inheritdoc />
    public override string TrellisClassName => ClassName;

    /// <inheritdoc />
    public void RegisterMemoryController(MemoryController? controller) => SetMemoryController(controller);
}
