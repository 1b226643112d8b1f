using System.Text.Json.Nodes;
using MdtDist.Core.Training;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Modules;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// TRELLIS's <c>SparseTransformerBase</c>, the trunk of the structured-latent VAE encoder and decoders:
/// <c>h = input_layer(feats) + APE(coords)</c>, then <c>num_blocks</c> sparse transformer blocks (attention "full" or
/// "swin" with shift <c>(W // 2)·(i % 2)</c>). Parameter names: <c>input_layer.*</c>, <c>blocks.{i}.*</c>.
/// Derived classes (in this assembly) add their own layers and must call <c>RegisterComponents()</c> at the end of
/// their constructor.
/// </summary>
/// <typeparam name="TResult">What <c>forward</c> returns.</typeparam>
public abstract class SparseTransformerBase<TResult> : nn.Module<SparseTensor, TResult>, ITrellisModel
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private protected Linear input_layer;
    private protected ModuleList<SparseTransformerBlock> blocks;
#pragma warning restore IDE1006

    private protected SparseTransformerBase(SLatVaeConfig config, long inChannels, ScalarType dtype, Device? device)
        : base(config.TrellisClassName)
    {
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
        VaeConfig = config;
        InChannels = inChannels;
        int? window = config.AttnMode == "swin" ? (int)config.WindowSize : null;
        input_layer = nn.Linear(inChannels, config.ModelChannels, true, device, dtype);
        blocks = new ModuleList<SparseTransformerBlock>();
        for (int i = 0; i < config.NumBlocks; i++)
            blocks.Add(new SparseTransformerBlock(config.ModelChannels, (int)config.Heads, config.MlpRatio, SparseBlockAttention.ForBlock(config.AttnMode, window, i),
                config.QkRmsNorm, qkvBias: true, lnAffine: false, dtype, device));
        Elastic = new ElasticBlocks(config.NumBlocks, config.UseCheckpoint);
    }

    /// <summary>Which blocks are checkpointed (<c>use_checkpoint</c>; the memory controller of the Elastic classes).</summary>
    private protected ElasticBlocks Elastic { get; }

    /// <summary>Attaches a memory controller (the Elastic classes expose this as <see cref="IElasticModule"/>).</summary>
    private protected void SetMemoryController(MemoryController? controller) => Elastic.Controller = controller;

    private protected SLatVaeConfig VaeConfig { get; }

    /// <summary>What the network is called in error messages ("encoder", "decoder").</summary>
    private protected virtual string Role => "decoder";

    /// <summary>The voxel grid resolution (coordinates lie in [0, resolution)).</summary>
    public int Resolution => (int)VaeConfig.Resolution;

    /// <summary>Input feature channels.</summary>
    public long InChannels { get; }

    /// <inheritdoc />
    public virtual string TrellisClassName => VaeConfig.TrellisClassName;

    /// <inheritdoc />
    public JsonObject ToConfigArgs() => VaeConfig.ToArgs();

    /// <inheritdoc />
    public ScalarType DType => input_layer.weight.dtype;

    /// <summary>The dtype the blocks run in (TRELLIS's <c>self.dtype</c>: the blocks' parameter dtype).</summary>
    public ScalarType TorsoDType => blocks.Count > 0 ? blocks[0].attn.to_out.weight.dtype : _torso ?? DType;

    private ScalarType? _torso;

    /// <summary>
    /// Converts the blocks' linear layers to <paramref name="dtype"/> (TRELLIS's <c>convert_to_fp16</c>); derived networks
    /// convert their own torso layers too.
    /// </summary>
    public virtual void SetTorsoDType(ScalarType dtype)
    {
        Precision.RequireFloat(dtype, nameof(dtype));
        foreach (var m in blocks.modules())
            if (m is Linear l) l.to(dtype);
        _torso = dtype;
    }

    /// <summary>The trunk: returns the block output (in <see cref="TorsoDType"/>).</summary>
    private protected SparseTensor ForwardTrunk(SparseTensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.Feats.dim() != 2 || x.Feats.shape[1] != InChannels)
            throw new ArgumentException($"{GetType().Name} expects feats [N, {InChannels}], found [{string.Join(", ", x.Feats.shape)}].", nameof(x));
        if (x.Coordinates.MaxCoordinate >= Resolution)
            throw new ArgumentException($"coords reach {x.Coordinates.MaxCoordinate}, outside the {Role}'s grid [0, {Resolution}).", nameof(x));
        var inDtype = input_layer.weight.dtype;
        var h = input_layer.forward(x.Feats.As(inDtype));
        h = h + SparseEmbeddings.AbsolutePosition(x.Coordinates.Coords64[.., 1..], VaeConfig.ModelChannels, inDtype);
        var hs = x.ReplaceFeats(h.As(TorsoDType));
        return Elastic.Run(this, x.Feats.shape[0], () =>
        {
            for (int i = 0; i < blocks.Count; i++)
            {
                var block = blocks[i];
                var hin = hs;
                hs = Elastic.Checkpoints(i) ? ElasticBlocks.Checkpointed(block, hin) : Precision.Scoped(() => block.Forward(hin));
            }
            return hs;
        });
    }
}
