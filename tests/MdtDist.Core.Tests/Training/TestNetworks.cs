using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Tests.Training;

/// <summary>
/// A small MLP velocity field v(x, t) for x of shape [B, D]: input [x, t, sin(πt), cos(πt)] → SiLU layers → D.
/// Weights are drawn from a local generator (no global RNG), so tests running in parallel stay deterministic.
/// With <see cref="ComputeDType"/> set, the layers run in that dtype while inputs/outputs stay in the latent's
/// dtype (the TRELLIS style of mixed precision inside the network).
/// </summary>
internal sealed class MlpVelocity : nn.Module<Tensor, Tensor>
{
    private readonly Sequential net;

    public MlpVelocity(int dim, int hidden, int layers, ulong seed, ScalarType dtype = ScalarType.Float32) : base("mlp")
    {
        var mods = new List<nn.Module<Tensor, Tensor>>();
        int inDim = dim + 3;
        for (int i = 0; i < layers; i++)
        {
            mods.Add(nn.Linear(i == 0 ? inDim : hidden, hidden));
            mods.Add(nn.SiLU());
        }
        mods.Add(nn.Linear(hidden, dim));
        net = nn.Sequential(mods.ToArray());
        RegisterComponents();
        using var g = new Generator(seed);
        using (torch.no_grad())
        {
            foreach (var (name, p) in named_parameters())
            {
                var fanIn = p.dim() == 2 ? p.shape[1] : 1;
                var init = p.dim() == 2
                    ? torch.randn(p.shape, generator: g) * Math.Sqrt(1.0 / fanIn)
                    : torch.randn(p.shape, generator: g) * 0.05;
                p.copy_(init);
            }
        }
        this.to(dtype);
    }

    public override Tensor forward(Tensor input) => net.forward(input);
}

internal sealed class MlpFlow : IFlowNetwork
{
    private readonly MlpVelocity _mlp;

    public MlpFlow(int dim, int hidden, int layers, ulong seed, ScalarType dtype = ScalarType.Float32, ScalarType? paramDType = null, double inputScale = 1.0)
    {
        InputScale = inputScale;
        _mlp = new MlpVelocity(dim, hidden, layers, seed, paramDType ?? dtype);
        ComputeDType = paramDType;
    }

    public ScalarType? ComputeDType { get; }

    /// <summary>x is multiplied by this before the first layer (steeper features for maps with sharp transitions).</summary>
    public double InputScale { get; }

    /// <summary>When true, the output carries a term whose value is 0 but whose gradient is NaN.</summary>
    public bool PoisonGradient { get; set; }

    public nn.Module Module => _mlp;

    public Tensor Velocity(Latent x, Tensor t, Tensor? condition)
    {
        var tt = t.to(x.Data.dtype).unsqueeze(1);
        var input = torch.cat(new[] { InputScale == 1.0 ? x.Data : x.Data * InputScale, tt, torch.sin(Math.PI * tt), torch.cos(Math.PI * tt) }, 1);
        var v = ComputeDType is { } cd ? _mlp.forward(input.to(cd)).to(x.Data.dtype) : _mlp.forward(input);
        if (PoisonGradient)
        {
            var p = _mlp.parameters().First();
            v = v + torch.sqrt(p.sum() * 0.0).to(v.dtype) * 0.0;
        }
        return v;
    }
}


internal static class ParamUtil
{
    public static Dictionary<string, Tensor> Snapshot(nn.Module m) =>
        m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope());

    public static bool BitEqual(IReadOnlyDictionary<string, Tensor> a, IReadOnlyDictionary<string, Tensor> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var o) && kv.Value.dtype == o.dtype && kv.Value.Equals(o));

    public static void Dispose(IReadOnlyDictionary<string, Tensor> d)
    {
        foreach (var t in d.Values) t.Dispose();
    }
}
