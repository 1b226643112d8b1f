using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// The two-layer MLP of the condition encoders' transformer blocks, <c>fc2(act(fc1(x)))</c> with state-dict names
/// <c>fc1</c> / <c>fc2</c>: DINOv2's <c>Mlp</c> (exact erf GELU) and transformers' <c>CLIPMLP</c> (CLIP's quick-GELU
/// <c>x·σ(1.702x)</c>, or GELU when the config says <c>gelu</c>).
/// </summary>
internal sealed class Fc1Fc2Mlp : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are the PyTorch state-dict names
    private readonly Linear fc1;
    private readonly Linear fc2;
#pragma warning restore IDE1006
    private readonly bool _quickGelu;

    /// <summary>Builds <c>fc1</c> [<paramref name="hidden"/>, <paramref name="dim"/>] and <c>fc2</c> [<paramref name="dim"/>, <paramref name="hidden"/>] (both with bias).</summary>
    public Fc1Fc2Mlp(long dim, long hidden, bool quickGelu, ScalarType dtype, Device? device) : base("Mlp")
    {
        fc1 = nn.Linear(dim, hidden, dtype: dtype, device: device);
        fc2 = nn.Linear(hidden, dim, dtype: dtype, device: device);
        _quickGelu = quickGelu;
        RegisterComponents();
    }

    /// <summary><c>fc2(act(fc1(x)))</c> on <c>[..., dim]</c>.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = fc1.forward(x);
        h = _quickGelu ? h * torch.sigmoid(1.702 * h) : F.gelu(h);
        return fc2.forward(h).MoveToOuterDisposeScope();
    }
}
