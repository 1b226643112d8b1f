using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>TRELLIS's sinusoidal embeddings (position and timestep), for the sparse models.</summary>
internal static class SparseEmbeddings
{
    /// <summary>
    /// TRELLIS's <c>AbsolutePositionEmbedder(channels, 3)</c> on integer positions <paramref name="xyz"/> <c>[N, 3]</c>:
    /// <c>freq_dim = channels // 3 // 2</c>, <c>freqs[k] = 1 / 10000^(k / freq_dim)</c>; each axis gives
    /// <c>[sin(c·f), cos(c·f)]</c> (sin first), axes concatenated x|y|z and zero-padded to <paramref name="channels"/>.
    /// Computed in float32 (TRELLIS's frequency table), or float64 when <paramref name="dtype"/> is float64; returned in
    /// <paramref name="dtype"/>.
    /// </summary>
    public static Tensor AbsolutePosition(Tensor xyz, long channels, ScalarType dtype)
    {
        var ct = Precision.AtLeastFloat32(dtype);
        long n = xyz.shape[0];
        long freqDim = channels / 3 / 2;
        var freqs = torch.arange(freqDim, dtype: ct, device: xyz.device) / freqDim;
        freqs = torch.pow(10000.0, freqs).reciprocal();
        var args = torch.outer(xyz.reshape(-1).to(ct), freqs);          // [N*3, F]
        var emb = torch.cat(new[] { args.sin(), args.cos() }, -1).reshape(n, -1);
        if (emb.shape[1] < channels)
            emb = torch.cat(new[] { emb, torch.zeros(new[] { n, channels - emb.shape[1] }, dtype: ct, device: xyz.device) }, -1);
        return emb.As(dtype);
    }

    /// <summary>
    /// TRELLIS's <c>TimestepEmbedder.timestep_embedding(t, dim)</c>: <c>[cos(t·f), sin(t·f)]</c> (cos first),
    /// <c>f[k] = exp(-ln(10000)·k / (dim/2))</c>, in float32 (float64 when <paramref name="dtype"/> is float64).
    /// </summary>
    public static Tensor Timestep(Tensor t, long dim, ScalarType dtype)
    {
        var ct = Precision.AtLeastFloat32(dtype);
        long half = dim / 2;
        var freqs = torch.exp(torch.arange(half, dtype: ct, device: t.device) * (-Math.Log(10000.0)) / half);
        var args = t.reshape(-1, 1).to(ct) * freqs.unsqueeze(0);
        var emb = torch.cat(new[] { args.cos(), args.sin() }, -1);
        if (dim % 2 == 1) emb = torch.cat(new[] { emb, torch.zeros_like(emb[.., ..1]) }, -1);
        return emb;
    }
}

/// <summary>TRELLIS's <c>TimestepEmbedder</c>: the 256-wide sinusoidal embedding, then <c>mlp = Linear → SiLU → Linear</c>.</summary>
internal sealed class SLatTimestepEmbedder : nn.Module
{
#pragma warning disable IDE1006
    public Sequential mlp;
#pragma warning restore IDE1006

    public SLatTimestepEmbedder(long hiddenSize, long frequencyEmbeddingSize, ScalarType dtype, Device? device) : base("TimestepEmbedder")
    {
        FrequencyEmbeddingSize = frequencyEmbeddingSize;
        mlp = nn.Sequential(("0", nn.Linear(frequencyEmbeddingSize, hiddenSize, true, device, dtype)), ("1", nn.SiLU()), ("2", nn.Linear(hiddenSize, hiddenSize, true, device, dtype)));
        RegisterComponents();
    }

    public long FrequencyEmbeddingSize { get; }

    /// <summary>t in TRELLIS units (1000·t), <c>[B]</c> → <c>[B, hidden]</c> in the MLP's dtype.</summary>
    public Tensor Forward(Tensor t)
    {
        var wdt = mlp.parameters().First().dtype;
        var f = SparseEmbeddings.Timestep(t, FrequencyEmbeddingSize, wdt);
        return mlp.forward(f.As(wdt));
    }
}
