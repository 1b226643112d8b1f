using MdtDist.Core;
using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Models;

/// <summary>
/// TRELLIS's stage-1 flow transformer (<c>trellis.models.sparse_structure_flow.SparseStructureFlowModel</c>): predicts the
/// velocity of the dense sparse-structure latent <c>[B, in_channels, R, R, R]</c> from the timestep (in TRELLIS units,
/// 1000·t) and condition tokens <c>[B, L, cond_channels]</c>. Module tree and parameter names are TRELLIS's state dict
/// (<c>t_embedder.mlp.0.weight</c>, <c>blocks.0.self_attn.to_qkv.weight</c>, <c>pos_emb</c>, ...).
/// </summary>
/// <remarks>
/// Parameters are created in one dtype (float32 by default; float64 for exact tests). <see cref="SetTorsoDType"/>
/// runs the transformer blocks in float16 / bfloat16 as TRELLIS's <c>use_fp16</c> does (the block Linear layers are
/// converted; norms compute in at least float32; embeddings and the output layer keep the model dtype).
/// </remarks>
public sealed class SparseStructureFlowModel : nn.Module<Tensor, Tensor, Tensor, Tensor>, ITrellisModel
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly TimestepEmbedder t_embedder;
    private readonly Sequential? adaLN_modulation;
    private readonly Tensor pos_emb;
    private readonly Linear input_layer;
    private readonly ModuleList<ModulatedTransformerCrossBlock> blocks;
    private readonly Linear out_layer;
#pragma warning restore IDE1006
    private AttentionBackend _backend = AttentionBackend.Auto;

    /// <summary>Builds the network with TRELLIS-style fresh weights (PyTorch default init; use a checkpoint for real weights).</summary>
    /// <param name="config">The constructor arguments.</param>
    /// <param name="dtype">Parameter dtype: float32 (default), float64, float16 or bfloat16.</param>
    /// <param name="device">Device (CPU by default; the meta device builds shapes only).</param>
    /// <exception cref="ArgumentException">Invalid config or dtype.</exception>
    /// <exception cref="NotSupportedException"><c>pe_mode</c> "rope" (see <see cref="SparseStructureFlowConfig.Validate"/>).</exception>
    public SparseStructureFlowModel(SparseStructureFlowConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(SparseStructureFlowConfig.ClassName)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Precision.RequireFloat(dtype, nameof(dtype));
        Config = config;
        long c = config.ModelChannels, p = config.PatchSize;
        t_embedder = new TimestepEmbedder(c, 256, dtype, device);
        if (config.ShareMod)
            adaLN_modulation = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(c, 6 * c, device: device, dtype: dtype)));
        // TRELLIS computes the buffer in float32; compute in max(float32, dtype) and store in the model dtype.
        using (var posScope = torch.NewDisposeScope())
        {
            var pe = AbsolutePositionEmbedder.Grid3d(config.Resolution / p, c, Precision.AtLeastFloat32(dtype), device);
            pos_emb = pe.As(dtype).contiguous().DetachFromDisposeScope();
        }
        input_layer = nn.Linear(config.InChannels * p * p * p, c, device: device, dtype: dtype);
        blocks = new ModuleList<ModulatedTransformerCrossBlock>();
        for (long i = 0; i < config.NumBlocks; i++)
            blocks.Add(new ModulatedTransformerCrossBlock(c, config.CondChannels, config.Heads, config.MlpRatio, config.ShareMod,
                config.QkRmsNorm, config.QkRmsNormCross, qkvBias: true, dtype, device));
        out_layer = nn.Linear(c, config.OutChannels * p * p * p, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>The constructor arguments.</summary>
    public SparseStructureFlowConfig Config { get; }

    /// <inheritdoc />
    public string TrellisClassName => SparseStructureFlowConfig.ClassName;

    /// <inheritdoc />
    public JsonObject ToConfigArgs() => Config.ToArgs();

    /// <summary>The dtype of the embedding / IO parameters (the dtype inputs are expected in).</summary>
    public ScalarType DType => input_layer.weight.dtype;

    /// <summary>The device of the parameters.</summary>
    public Device Device => input_layer.weight.device;

    /// <summary>The dtype the transformer blocks compute in (<see cref="DType"/> unless changed by <see cref="SetTorsoDType"/>).</summary>
    public ScalarType TorsoDType => _torso ?? DType;

    private ScalarType? _torso;

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

    /// <summary>How attention is computed (default <see cref="AttentionBackend.Auto"/>: fused SDPA for float32/float16/bfloat16 on any device, exact math for float64).</summary>
    public AttentionBackend AttentionBackend
    {
        get => _backend;
        set
        {
            _backend = value;
            foreach (var b in blocks) b.Backend = value;
        }
    }

    /// <summary>
    /// Runs the transformer blocks in <paramref name="dtype"/> (TRELLIS's <c>convert_to_fp16</c> generalised: float16,
    /// bfloat16, or back to float32 / float64): converts every Linear layer of the blocks and casts activations, the
    /// t embedding and the condition to it inside the torso.
    /// </summary>
    public void SetTorsoDType(ScalarType dtype)
    {
        Precision.RequireFloat(dtype, nameof(dtype));
        foreach (var b in blocks)
            foreach (var l in b.Linears())
                l.to(dtype);
        _torso = dtype;
    }

    /// <summary>
    /// v = model(x, t, cond). <paramref name="x"/> <c>[B, in_channels, R, R, R]</c>, <paramref name="t"/> <c>[B]</c> in
    /// TRELLIS units (1000·t), <paramref name="cond"/> <c>[B, L, cond_channels]</c>; returns <c>[B, out_channels, R, R, R]</c>
    /// in the dtype of <paramref name="x"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A shape does not match the config.</exception>
    public override Tensor forward(Tensor x, Tensor t, Tensor cond)
    {
        ValidateInputs(x, t, cond);
        var cfg = Config;
        long b = x.shape[0], p = cfg.PatchSize, r = cfg.Resolution / p;
        var torso = TorsoDType;
        using var scope = torch.NewDisposeScope();
        var h = Spatial.Patchify3d(x, p);
        h = h.reshape(h.shape[0], h.shape[1], -1).permute(0, 2, 1).contiguous();
        h = input_layer.forward(h);
        h = h + pos_emb.unsqueeze(0);
        var tEmb = t_embedder.forward(t);
        if (adaLN_modulation is not null) tEmb = adaLN_modulation.forward(tEmb);
        tEmb = tEmb.As(torso);
        h = h.As(torso);
        var ctx = _conditionCast.Cast(cond, torso, training);
        foreach (var block in blocks)
            h = block.forward(h, tEmb, ctx);
        h = h.As(x.dtype);
        h = F.layer_norm(h, new[] { h.shape[^1] }, eps: 1e-5);
        h = out_layer.forward(h);
        h = h.permute(0, 2, 1).reshape(b, h.shape[2], r, r, r);
        h = Spatial.Unpatchify3d(h, p).contiguous();
        return h.MoveToOuterDisposeScope();
    }

    internal void ValidateInputs(Tensor x, Tensor t, Tensor cond)
    {
        var cfg = Config;
        long r = cfg.Resolution;
        if (x.dim() != 5 || x.shape[1] != cfg.InChannels || x.shape[2] != r || x.shape[3] != r || x.shape[4] != r)
            throw new ArgumentException($"x: expected shape [B, {cfg.InChannels}, {r}, {r}, {r}], found {Precision.Shape(x.shape)}.", nameof(x));
        if (x.dtype != DType)
            throw new ArgumentException($"x: dtype {x.dtype} differs from the model's parameter dtype {DType}.", nameof(x));
        long b = x.shape[0];
        ArgumentChecks.PerSampleTime(t, b);
        if (cond.dim() != 3 || cond.shape[0] != b || cond.shape[2] != cfg.CondChannels)
            throw new ArgumentException($"cond: expected shape [{b}, L, {cfg.CondChannels}], found {Precision.Shape(cond.shape)}.", nameof(cond));
    }
}
