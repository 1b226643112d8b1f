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
public abstract class SparseTransformerBase : nn.Module
{
#pragma warning disable IDE1006 // PyTorch state_dict names
    private protected Linear input_layer;
    private protected ModuleList<SparseTransformerBlock> blocks;
#pragma warning restore IDE1006

    private protected SparseTransformerBase(string name, int resolution, long inChannels, long modelChannels, int numBlocks, int? numHeads, int numHeadChannels,
        double mlpRatio, string attnMode, int? windowSize, string peMode, bool qkRmsNorm, ScalarType dtype, Device? device)
        : base(name)
    {
        if (peMode != "ape")
            throw new ArgumentException($"pe_mode '{peMode}' is not supported (only 'ape'; no released TRELLIS config uses 'rope').", nameof(peMode));
        if (inChannels < 1 || modelChannels < 1 || numBlocks < 0)
            throw new ArgumentException($"invalid sizes: in_channels {inChannels}, model_channels {modelChannels}, num_blocks {numBlocks}.", nameof(modelChannels));
        if (resolution < 1) throw new ArgumentException($"resolution must be >= 1, got {resolution}.", nameof(resolution));
        Resolution = resolution;
        InChannels = inChannels;
        ModelChannels = modelChannels;
        NumHeads = numHeads ?? (int)(modelChannels / numHeadChannels);
        if (NumHeads < 1 || modelChannels % NumHeads != 0)
            throw new ArgumentException($"model_channels {modelChannels} is not divisible into {NumHeads} heads.", nameof(numHeads));
        AttnMode = attnMode;
        WindowSize = windowSize;
        input_layer = nn.Linear(inChannels, modelChannels, true, device, dtype);
        blocks = new ModuleList<SparseTransformerBlock>();
        for (int i = 0; i < numBlocks; i++)
            blocks.Add(new SparseTransformerBlock(modelChannels, NumHeads, mlpRatio, SparseBlockAttention.ForBlock(attnMode, windowSize, i),
                qkRmsNorm, qkvBias: true, lnAffine: false, dtype, device));
    }

    /// <summary>What the network is called in error messages ("encoder", "decoder").</summary>
    private protected virtual string Role => "decoder";

    /// <summary>The voxel grid resolution (coordinates lie in [0, resolution)).</summary>
    public int Resolution { get; }

    /// <summary>Input feature channels.</summary>
    public long InChannels { get; }

    /// <summary>Width of the transformer.</summary>
    public long ModelChannels { get; }

    /// <summary>Attention heads.</summary>
    public int NumHeads { get; }

    /// <summary>"full" or "swin".</summary>
    public string AttnMode { get; }

    /// <summary>Swin window size.</summary>
    public int? WindowSize { get; }

    /// <summary>The dtype the blocks run in (TRELLIS's <c>self.dtype</c>: the blocks' parameter dtype).</summary>
    public ScalarType TorsoDtype => blocks.Count > 0 ? blocks[0].attn.to_out.weight.dtype : input_layer.weight.dtype;

    /// <summary>Converts the blocks' linear layers to <paramref name="dtype"/> (TRELLIS's <c>convert_to_fp16</c>).</summary>
    public void ConvertTorso(ScalarType dtype)
    {
        foreach (var m in blocks.modules())
            if (m is Linear l) l.to(dtype);
    }

    /// <summary>The trunk: returns the block output (in <see cref="TorsoDtype"/>).</summary>
    private protected SparseTensor ForwardTrunk(SparseTensor x)
    {
        if (x.Feats.dim() != 2 || x.Feats.shape[1] != InChannels)
            throw new ArgumentException($"{GetType().Name} expects feats [N, {InChannels}], found [{string.Join(", ", x.Feats.shape)}].", nameof(x));
        if (x.Coordinates.MaxCoordinate >= Resolution)
            throw new ArgumentException($"coords reach {x.Coordinates.MaxCoordinate}, outside the {Role}'s grid [0, {Resolution}).", nameof(x));
        var inDtype = input_layer.weight.dtype;
        var h = input_layer.forward(x.Feats.As(inDtype));
        h = h + SparseEmbeddings.AbsolutePosition(x.Coordinates.Coords64[.., 1..], ModelChannels, inDtype);
        var hs = x.ReplaceFeats(h.As(TorsoDtype));
        foreach (var block in blocks)
        {
            var hin = hs;
            hs = Precision.Scoped(() => block.Forward(hin));
        }
        return hs;
    }
}
