using MdtDist.Core;
using MdtDist.Core.Training;
using MdtDist.Trellis.Modules;
using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Sparse;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Models;

/// <summary>
/// TRELLIS's <c>SparseResBlock3d</c>: <c>x = up/down(x); h = conv1(SiLU(norm1(x))); h = norm2(h)·(1 + scale) + shift;
/// h = conv2(SiLU(h)); out = h + skip(x)</c>, with <c>(scale, shift) = emb_layers(t_emb).chunk(2)</c> (scale first).
/// </summary>
internal sealed class SparseResBlock3d : nn.Module
{
#pragma warning disable IDE1006
    public LayerNorm32 norm1;
    public LayerNorm32 norm2;
    public SparseConv3d conv1;
    public SparseConv3d conv2;
    public Sequential emb_layers;
    public Linear? skip_connection;
#pragma warning restore IDE1006
    private readonly bool _down, _up;

    public SparseResBlock3d(long channels, long embChannels, long outChannels, bool downsample, bool upsample, ScalarType dtype, Device? device)
        : base(nameof(SparseResBlock3d))
    {
        if (downsample && upsample) throw new ArgumentException("a SparseResBlock3d cannot downsample and upsample at the same time.");
        Channels = channels;
        OutChannels = outChannels;
        _down = downsample;
        _up = upsample;
        norm1 = new LayerNorm32(channels, true, 1e-6, dtype, device);
        norm2 = new LayerNorm32(outChannels, false, 1e-6, dtype, device);
        conv1 = new SparseConv3d(channels, outChannels, 3, true, dtype, device);
        conv2 = new SparseConv3d(outChannels, outChannels, 3, true, dtype, device);
        Init.Zero(conv2.conv.weight);
        Init.Zero(conv2.conv.bias);
        emb_layers = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(embChannels, 2 * outChannels, true, device, dtype)));
        skip_connection = channels != outChannels ? nn.Linear(channels, outChannels, true, device, dtype) : null;
        RegisterComponents();
    }

    public long Channels { get; }
    public long OutChannels { get; }

    public SparseTensor Forward(SparseTensor x, Tensor emb)
    {
        if (x.Feats.shape[1] != Channels)
            throw new ArgumentException($"SparseResBlock3d expects {Channels} channels, found {x.Feats.shape[1]}.", nameof(x));
        var embOut = emb_layers.forward(emb).As(x.Dtype);
        var ss = embOut.chunk(2, 1);
        if (_up && SparseConv3d.FuseUpsample) return ForwardUpsampled(x, ss[0], ss[1]);
        if (_down) x = SparseSpatial.Downsample(x, 2);
        else if (_up) x = SparseSpatial.Upsample(x, 2);
        var scale = x.PerRowOrShared(ss[0]);
        var shift = x.PerRowOrShared(ss[1]);
        var h = nn.functional.silu(norm1.forward(x.Feats));
        h = conv1.Apply(h, x.Coordinates);
        h = norm2.forward(h) * (scale + 1) + shift;
        h = conv2.Apply(nn.functional.silu(h), x.Coordinates);
        h = h + (skip_connection is null ? x.Feats : skip_connection.forward(x.Feats));
        return x.ReplaceFeats(h);
    }

    /// <summary>
    /// The up-sampling block without convolving copies: norm1, SiLU and the skip projection act row by row, so they run
    /// on the coarse rows before the copy, and conv1 of the copies is <see cref="SparseConv3d.ApplyUpsampled"/>.
    /// </summary>
    private SparseTensor ForwardUpsampled(SparseTensor x, Tensor scale, Tensor shift)
    {
        var map = SparseSpatial.UpsampleMap(x.Coordinates, 2);
        var parent = map.FineToCoarse.On(x.Device);
        var sample = map.Fine.SampleIndex.On(x.Device);
        var h = conv1.ApplyUpsampled(nn.functional.silu(norm1.forward(x.Feats)), map);
        h = norm2.forward(h) * (scale.index_select(0, sample) + 1) + shift.index_select(0, sample);
        h = conv2.Apply(nn.functional.silu(h), map.Fine);
        var skip = skip_connection is null ? x.Feats : skip_connection.forward(x.Feats);
        return new SparseTensor(h + skip.index_select(0, parent), map.Fine);
    }
}

/// <summary>
/// TRELLIS's structured-latent flow network (<c>SLatFlowModel</c>, checkpoint <c>slat_flow_img_dit_L_64l8p2_fp16</c>):
/// input layer, sparse residual IO blocks that down-sample by <c>patch_size</c> (keeping skips), absolute position
/// embedding, modulated sparse transformer cross blocks (full self-attention per sample, cross-attention to the
/// condition tokens), residual output blocks that up-sample back (concatenating the skips), a parameter-free
/// LayerNorm and the output layer. Parameter names match TRELLIS's state_dict.
/// </summary>
public class SLatFlowModel : nn.Module<SparseTensor, Tensor, Tensor, SparseTensor>, ITrellisModel
{
#pragma warning disable IDE1006
    private readonly TimestepEmbedder t_embedder;
    private readonly Sequential? adaLN_modulation;
    private readonly Linear input_layer;
    private readonly ModuleList<SparseResBlock3d> input_blocks;
    private readonly ModuleList<ModulatedSparseTransformerCrossBlock> blocks;
    private readonly ModuleList<SparseResBlock3d> out_blocks;
    private readonly Linear out_layer;
#pragma warning restore IDE1006

    /// <summary>Builds the network with TRELLIS's <c>initialize_weights</c> (use a checkpoint for real weights).</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default; the meta device builds shapes only).</param>
    /// <exception cref="ArgumentException">The configuration is invalid or unsupported (see <see cref="SLatFlowConfig.Validate"/>), or the dtype is not floating.</exception>
    public SLatFlowModel(SLatFlowConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : this(config, dtype, device, SLatFlowConfig.ClassName)
    {
    }

    /// <summary>For subclasses (<see cref="ElasticSLatFlowModel"/>).</summary>
    protected SLatFlowModel(SLatFlowConfig config, ScalarType dtype, Device? device, string name) : base(name)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
        Config = config;
        long c = config.ModelChannels;
        int heads = (int)config.Heads;
        var io = config.IoBlockChannels;

        t_embedder = new TimestepEmbedder(c, 256, dtype, device);
        if (config.ShareMod)
            adaLN_modulation = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(c, 6 * c, true, device, dtype)));
        input_layer = nn.Linear(config.InChannels, io is null ? c : io[0], true, device, dtype);

        input_blocks = new ModuleList<SparseResBlock3d>();
        out_blocks = new ModuleList<SparseResBlock3d>();
        if (io is not null)
        {
            for (int s = 0; s < io.Count; s++)
            {
                long chs = io[s], next = s + 1 < io.Count ? io[s + 1] : c;
                for (int r = 0; r < config.NumIoResBlocks - 1; r++)
                    input_blocks.Add(new SparseResBlock3d(chs, c, chs, false, false, dtype, device));
                input_blocks.Add(new SparseResBlock3d(chs, c, next, true, false, dtype, device));
            }
            int mul = config.UseSkipConnection ? 2 : 1;
            for (int s = io.Count - 1; s >= 0; s--)
            {
                long chs = io[s], prev = s == io.Count - 1 ? c : io[s + 1];
                out_blocks.Add(new SparseResBlock3d(prev * mul, c, chs, false, true, dtype, device));
                for (int r = 0; r < config.NumIoResBlocks - 1; r++)
                    out_blocks.Add(new SparseResBlock3d(chs * mul, c, chs, false, false, dtype, device));
            }
        }

        blocks = new ModuleList<ModulatedSparseTransformerCrossBlock>();
        for (int i = 0; i < config.NumBlocks; i++)
            blocks.Add(new ModulatedSparseTransformerCrossBlock(c, config.CondChannels, heads, config.MlpRatio, SparseBlockAttention.Full,
                config.QkRmsNorm, config.QkRmsNormCross, qkvBias: true, config.ShareMod, dtype, device));

        out_layer = nn.Linear(io is null ? c : io[0], config.OutChannels, true, device, dtype);
        RegisterComponents();
        InitializeWeights();
        Elastic = new ElasticBlocks(config.NumBlocks, config.UseCheckpoint);
    }

    /// <summary>Which transformer blocks are checkpointed (<c>use_checkpoint</c>; the memory controller of the Elastic class).</summary>
    private protected ElasticBlocks Elastic { get; }

    /// <summary>The configuration.</summary>
    public SLatFlowConfig Config { get; }

    /// <inheritdoc />
    public virtual string TrellisClassName => SLatFlowConfig.ClassName;

    /// <inheritdoc />
    public JsonObject ToConfigArgs() => Config.ToArgs();

    /// <inheritdoc />
    public ScalarType DType => input_layer.weight.dtype;

    /// <summary>The dtype of the IO blocks and transformer blocks (TRELLIS's <c>self.dtype</c>).</summary>
    public ScalarType TorsoDType =>
        blocks.Count > 0 ? blocks[0].self_attn.to_out.weight.dtype
        : input_blocks.Count > 0 ? input_blocks[0].conv1.conv.weight.dtype
        : input_layer.weight.dtype;

    // the condition cast to the torso dtype, once per condition (see CrossAttentionKvCache.Cast)
    private readonly CrossAttentionKvCache _conditionCast = new();

    /// <summary>The condition-cast cache (for tests).</summary>
    internal CrossAttentionKvCache ConditionCast => _conditionCast;

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing) _conditionCast.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>
    /// Converts the linear and convolution weights of the IO blocks and transformer blocks to <paramref name="dtype"/>
    /// (TRELLIS's <c>convert_to_fp16</c> with float16); norms stay as they are and compute in at least float32.
    /// </summary>
    public void SetTorsoDType(ScalarType dtype)
    {
        Precision.RequireFloat(dtype, nameof(dtype));
        foreach (var list in new nn.Module[] { input_blocks, blocks, out_blocks })
            foreach (var m in list.modules())
                if (m is Linear or SubMConv3dWeights) m.to(dtype);
    }

    /// <summary>Evaluates the velocity network.</summary>
    /// <param name="x">Noisy latent on the voxels (<c>[N, in_channels]</c>, coordinates in <c>[0, resolution)</c>).</param>
    /// <param name="t">Timesteps <c>[B]</c> in TRELLIS units (1000·t).</param>
    /// <param name="cond">Condition tokens <c>[B, L, cond_channels]</c>.</param>
    /// <returns>The prediction on the same sites, rows in the input order, in the dtype of <paramref name="x"/>.</returns>
    /// <exception cref="ArgumentException">Shapes do not match the configuration, or coordinates lie outside the grid.</exception>
    public override SparseTensor forward(SparseTensor x, Tensor t, Tensor cond)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(cond);
        var cfg = Config;
        if (x.Feats.dim() != 2 || x.Feats.shape[1] != cfg.InChannels)
            throw new ArgumentException($"x feats must be [N, {cfg.InChannels}], found [{string.Join(", ", x.Feats.shape)}].", nameof(x));
        if (x.Coordinates.MaxCoordinate >= cfg.Resolution)
            throw new ArgumentException($"x coords reach {x.Coordinates.MaxCoordinate}, outside the model's grid [0, {cfg.Resolution}).", nameof(x));
        ArgumentChecks.PerSampleTime(t, x.BatchSize);
        if (cond.dim() != 3 || cond.shape[0] != x.BatchSize || cond.shape[2] != cfg.CondChannels)
            throw new ArgumentException($"cond must be [B={x.BatchSize}, L, cond_channels={cfg.CondChannels}], found [{string.Join(", ", cond.shape)}].", nameof(cond));

        using var scope = torch.NewDisposeScope();
        var torso = TorsoDType;
        var h = x.ReplaceFeats(input_layer.forward(x.Feats.As(input_layer.weight.dtype)).As(torso));
        var tEmb = t_embedder.forward(t.to(x.Device));
        if (adaLN_modulation is not null) tEmb = adaLN_modulation.forward(tEmb);
        tEmb = tEmb.As(torso);
        var c = cond.device_type == x.Device.type && cond.device_index == x.Device.index ? _conditionCast.Cast(cond, torso, training) : cond.to(torso, x.Device);

        var skips = new List<Tensor>();
        foreach (var block in input_blocks)
        {
            var hin = h;
            h = Precision.Scoped(() => block.Forward(hin, tEmb));
            skips.Add(h.Feats);
        }
        h = h.ReplaceFeats(h.Feats + SparseEmbeddings.AbsolutePosition(h.Coordinates.Coords64[.., 1..], cfg.ModelChannels, torso));
        h = Elastic.Run(this, x.Feats.shape[0], () =>
        {
            for (int i = 0; i < blocks.Count; i++)
            {
                var block = blocks[i];
                var hin = h;
                h = Elastic.Checkpoints(i) ? ElasticBlocks.Checkpointed(block, hin, tEmb, c) : Precision.Scoped(() => block.Forward(hin, tEmb, c));
            }
            return h;
        });
        for (int i = 0; i < out_blocks.Count; i++)
        {
            var skip = skips[skips.Count - 1 - i];
            var block = out_blocks[i];
            var hin = h;
            h = Precision.Scoped(() => cfg.UseSkipConnection
                ? block.Forward(hin.ReplaceFeats(torch.cat(new[] { hin.Feats, skip }, 1)), tEmb)
                : block.Forward(hin, tEmb));
        }
        var f = Precision.LayerNorm(h.Feats, null, null, 1e-5);
        f = out_layer.forward(f.As(out_layer.weight.dtype)).As(x.Dtype);
        return new SparseTensor(f.MoveToOuterDisposeScope(), x.Coordinates);
    }

    /// <summary>TRELLIS's <c>initialize_weights</c>: Xavier-uniform linear weights with zero bias, N(0, 0.02²) timestep MLP,
    /// zero adaLN modulation and output layer.</summary>
    private void InitializeWeights()
    {
        if (input_layer.weight.is_meta) return;
        using var _ = torch.no_grad();
        foreach (var m in modules())
            if (m is Linear l)
            {
                nn.init.xavier_uniform_(l.weight);
                Init.Zero(l.bias);
            }
        foreach (var l in t_embedder.Linears()) nn.init.normal_(l.weight, 0, 0.02);
        if (adaLN_modulation is not null)
            foreach (var p in adaLN_modulation.parameters()) Init.Zero(p);
        foreach (var b in blocks)
            if (b.adaLN_modulation is not null)
                foreach (var p in b.adaLN_modulation.parameters()) Init.Zero(p);
        Init.Zero(out_layer.weight);
        Init.Zero(out_layer.bias);
    }
}

/// <summary>
/// TRELLIS's <c>ElasticSLatFlowModel</c>: the network, weights and outputs of <see cref="SLatFlowModel"/>, with TRELLIS's
/// elastic memory: once a <see cref="MemoryController"/> is registered, each training forward with gradients asks it for
/// a memory ratio from the number of input voxels and recomputes the first transformer blocks in backward
/// (<see cref="ActivationCheckpoint"/>) accordingly. Gradients are the same as without it; only memory and time change.
/// </summary>
public sealed class ElasticSLatFlowModel : SLatFlowModel, IElasticModule
{
    /// <summary>Builds the network.</summary>
    public ElasticSLatFlowModel(SLatFlowConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(config, dtype, device, SLatFlowConfig.ElasticClassName)
    {
    }

    /// <inheritdoc />
    public override string TrellisClassName => SLatFlowConfig.ElasticClassName;

    /// <inheritdoc />
    public void RegisterMemoryController(MemoryController? controller) => Elastic.Controller = controller;
}
