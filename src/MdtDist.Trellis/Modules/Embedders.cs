using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Modules;

/// <summary>
/// TRELLIS's <c>TimestepEmbedder</c>: t (already scaled to [0, 1000]) → 256-dim <c>[cos(t·f), sin(t·f)]</c> (cos first),
/// <c>f[k] = exp(−ln(10000)·k/128)</c>, then <c>mlp</c> = Linear(256, C) → SiLU → Linear(C, C)
/// (state-dict names <c>mlp.0.*</c>, <c>mlp.2.*</c>). The sinusoid is computed in at least float32.
/// </summary>
internal sealed class TimestepEmbedder : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Sequential mlp;
#pragma warning restore IDE1006
    private readonly Linear _first;

    public TimestepEmbedder(long hiddenSize, long frequencyEmbeddingSize, ScalarType dtype, Device? device) : base(nameof(TimestepEmbedder))
    {
        FrequencyEmbeddingSize = frequencyEmbeddingSize;
        _first = nn.Linear(frequencyEmbeddingSize, hiddenSize, device: device, dtype: dtype);
        mlp = nn.Sequential(
            ("0", _first),
            ("1", nn.SiLU()),
            ("2", nn.Linear(hiddenSize, hiddenSize, device: device, dtype: dtype)));
        // _first is reachable through mlp; register only mlp.
        register_module("mlp", mlp);
    }

    public long FrequencyEmbeddingSize { get; }

    internal IEnumerable<Linear> Linears() => mlp.children().OfType<Linear>();

    /// <summary>The sinusoidal embedding <c>[N, dim]</c> of t <c>[N]</c>, computed in <paramref name="dtype"/>.</summary>
    public static Tensor Sinusoid(Tensor t, long dim, ScalarType dtype, double maxPeriod = 10000)
    {
        using var scope = torch.NewDisposeScope();
        long half = dim / 2;
        var freqs = torch.exp(torch.arange(0, half, dtype: dtype, device: t.device) * (-Math.Log(maxPeriod)) / half);
        var args = t.As(dtype).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = torch.cat(new[] { torch.cos(args), torch.sin(args) }, -1);
        if (dim % 2 == 1) emb = torch.cat(new[] { emb, torch.zeros_like(emb[.., ..1]) }, -1);
        return emb.MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var pd = _first.weight.dtype;
        var freq = Sinusoid(t, FrequencyEmbeddingSize, Precision.AtLeastFloat32(pd));
        return mlp.forward(freq.As(pd)).MoveToOuterDisposeScope();
    }

    protected override void RegisterComponents() { }
}

/// <summary>
/// TRELLIS's <c>AbsolutePositionEmbedder(channels, in_channels)</c>: every coordinate axis is embedded as
/// <c>[sin(c·f), cos(c·f)]</c> (sin first) with <c>f[k] = 1/10000^(k/freq_dim)</c>, <c>freq_dim = channels // in_channels // 2</c>;
/// the axes are concatenated in order and zero-padded at the end up to <c>channels</c>. Parameter-free.
/// </summary>
internal static class AbsolutePositionEmbedder
{
    /// <summary>Embeds integer or real coordinates <c>[N, inChannels]</c> into <c>[N, channels]</c>, computed in <paramref name="dtype"/>.</summary>
    public static Tensor Embed(Tensor coords, long channels, ScalarType dtype)
    {
        if (coords.dim() != 2) throw new ArgumentException($"coords must be [N, D], got {Precision.Shape(coords.shape)}.", nameof(coords));
        using var scope = torch.NewDisposeScope();
        long n = coords.shape[0], inChannels = coords.shape[1];
        long freqDim = channels / inChannels / 2;
        var freqs = torch.arange(freqDim, dtype: dtype, device: coords.device) / freqDim;
        // Python: 1.0 / (10000 ** freqs) → pow(full(10000), freqs).reciprocal()
        freqs = torch.full_like(freqs, 10000.0).pow(freqs).reciprocal();
        var x = coords.reshape(-1).to(dtype);
        var o = torch.outer(x, freqs);
        var emb = torch.cat(new[] { torch.sin(o), torch.cos(o) }, -1).reshape(n, -1);
        if (emb.shape[1] < channels)
            emb = torch.cat(new[] { emb, torch.zeros(new[] { n, channels - emb.shape[1] }, dtype: dtype, device: coords.device) }, -1);
        return emb.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The embedding of every integer cell of a <paramref name="resolution"/>³ grid, x-major (x slowest, z fastest),
    /// as the <c>pos_emb</c> buffer of the dense flow model: <c>[resolution³, channels]</c>.
    /// </summary>
    public static Tensor Grid3d(long resolution, long channels, ScalarType dtype, Device? device)
    {
        using var scope = torch.NewDisposeScope();
        var r = torch.arange(resolution, dtype: ScalarType.Int64, device: device);
        var grids = torch.meshgrid(new[] { r, r, r }, indexing: "ij");
        var coords = torch.stack(grids, -1).reshape(-1, 3);
        return Embed(coords, channels, dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>TRELLIS's <c>FeedForwardNet</c>: <c>mlp</c> = Linear(C, int(C·ratio)) → GELU(tanh) → Linear(int(C·ratio), C).</summary>
internal sealed class FeedForwardNet : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Sequential mlp;
#pragma warning restore IDE1006

    public FeedForwardNet(long channels, double mlpRatio, ScalarType dtype, Device? device) : base(nameof(FeedForwardNet))
    {
        long hidden = HiddenChannels(channels, mlpRatio);
        mlp = nn.Sequential(
            ("0", nn.Linear(channels, hidden, device: device, dtype: dtype)),
            ("1", nn.GELU(GELU.Approximate.tanh)),
            ("2", nn.Linear(hidden, channels, device: device, dtype: dtype)));
        RegisterComponents();
    }

    /// <summary>Python's <c>int(channels * mlp_ratio)</c>.</summary>
    public static long HiddenChannels(long channels, double mlpRatio) => (long)Math.Truncate(channels * mlpRatio);

    internal IEnumerable<Linear> Linears() => mlp.children().OfType<Linear>();

    private (Linear Fc1, Linear Fc2) FirstAndLast()
    {
        var l = Linears().ToArray();
        return (l[0], l[1]);
    }

    /// <summary>Hidden elements per row chunk of <see cref="AddForward"/> (≈ 2,700 rows at 3,072 hidden channels).</summary>
    internal static long RowChunkElements = 1L << 23;

    /// <summary>Without autograd the GELU runs in place on the first layer's output (one large buffer less).</summary>
    public override Tensor forward(Tensor x)
    {
        if (torch.is_grad_enabled()) return mlp.forward(x);
        using var scope = torch.NewDisposeScope();
        var (fc1, fc2) = FirstAndLast();
        var h = fc1.forward(x).gelu_(GELU.Approximate.tanh);
        return fc2.forward(h).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>x += forward(pre(x))</c> for row-wise <paramref name="pre"/>: without autograd, in place on <paramref name="x"/>
    /// <c>[N, C]</c> and row chunk by row chunk, so that the hidden activations stay small (cache-sized, reused by the
    /// allocator instead of fresh pages per call); with autograd, out of place. Returns the sum.
    /// </summary>
    internal Tensor AddForward(Tensor x, Func<Tensor, Tensor> pre)
    {
        if (torch.is_grad_enabled() || x.dim() != 2) return x + forward(pre(x));
        long n = x.shape[0], rows = Math.Max(1, RowChunkElements / Math.Max(1, FirstAndLast().Fc1.weight.shape[0]));
        for (long r = 0; r < n; r += rows)
        {
            using var scope = torch.NewDisposeScope();
            var xr = x.narrow(0, r, Math.Min(rows, n - r));
            xr.add_(forward(pre(xr)));
        }
        return x;
    }
}
