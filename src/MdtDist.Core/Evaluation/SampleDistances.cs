using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Evaluation;

/// <summary>Distances between two point sets, used to measure sample quality (lower is better).</summary>
public static class SampleDistances
{
    /// <summary>
    /// Sliced 2-Wasserstein distance between point sets <c>[N, D]</c> and <c>[M, D]</c>: the root mean over
    /// <paramref name="projections"/> random unit directions of the squared 1-D W2 distance between the projected
    /// sets (quantiles matched after sorting; when N ≠ M the larger set is subsampled by quantile).
    /// </summary>
    /// <exception cref="ArgumentException">Shapes are not [N, D] / [M, D] with the same D, or projections &lt; 1.</exception>
    public static double SlicedWasserstein(Tensor a, Tensor b, int projections = 256, Generator? generator = null)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.shape[1] != b.shape[1])
            throw new ArgumentException($"expected point sets [N, D] and [M, D], got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        if (projections < 1) throw new ArgumentException($"projections must be >= 1, got {projections}.", nameof(projections));
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var x = a.detach().to(ScalarType.Float64).cpu();
        var y = b.detach().to(ScalarType.Float64).cpu();
        var dirs = torch.randn(new[] { x.shape[1], (long)projections }, dtype: ScalarType.Float64, generator: generator);
        dirs = dirs / dirs.norm(0, keepdim: true);
        var px = x.matmul(dirs).sort(0).Values;
        var py = y.matmul(dirs).sort(0).Values;
        long n = Math.Min(px.shape[0], py.shape[0]);
        px = Quantiles(px, n);
        py = Quantiles(py, n);
        return Math.Sqrt((px - py).square().mean().item<double>());
    }

    private static Tensor Quantiles(Tensor sorted, long n)
    {
        if (sorted.shape[0] == n) return sorted;
        var idx = ((torch.arange(n, dtype: ScalarType.Float64) + 0.5) * sorted.shape[0] / n).floor().to(ScalarType.Int64);
        return sorted.index_select(0, idx);
    }
}
