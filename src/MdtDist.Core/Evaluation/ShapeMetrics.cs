using MathNet.Numerics.LinearAlgebra;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Core.Evaluation;

/// <summary>Coverage / minimum matching distance / 1-NN accuracy of a generated set against a reference set.</summary>
/// <param name="Coverage">Fraction of reference items that are the nearest neighbour of some generated item (higher is better).</param>
/// <param name="MinimumMatchingDistance">Mean over reference items of the distance to the nearest generated item (lower is better).</param>
/// <param name="OneNearestNeighbourAccuracy">Leave-one-out 1-NN classification accuracy of generated vs reference (0.5 is ideal).</param>
public sealed record SetComparison(double Coverage, double MinimumMatchingDistance, double OneNearestNeighbourAccuracy);

/// <summary>
/// Quality measures for generated 3D samples, so that claims about students vs teachers are measured: Chamfer distance
/// between point clouds (e.g. occupied voxels or Gaussian centres), the set metrics built on a pairwise distance
/// (coverage, MMD, 1-NNA), and the Fréchet distance between feature distributions.
/// </summary>
public static class ShapeMetrics
{
    /// <summary>
    /// Symmetric Chamfer distance between point clouds <c>[N, D]</c> and <c>[M, D]</c>: mean squared distance from each
    /// point to its nearest neighbour in the other cloud, averaged over both directions.
    /// </summary>
    /// <exception cref="ArgumentException">Not two non-empty <c>[N, D]</c> clouds of the same D.</exception>
    public static double Chamfer(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.shape[1] != b.shape[1] || a.shape[0] == 0 || b.shape[0] == 0)
            throw new ArgumentException($"expected non-empty point clouds [N, D] and [M, D], got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var x = a.detach().to(ScalarType.Float64).cpu();
        var y = b.detach().to(ScalarType.Float64).cpu();
        // Chunk the distance matrix so large clouds stay within memory.
        double Directed(Tensor p, Tensor q)
        {
            double sum = 0;
            const long chunk = 4096;
            for (long i = 0; i < p.shape[0]; i += chunk)
            {
                using var s = torch.NewDisposeScope();
                var part = p.narrow(0, i, Math.Min(chunk, p.shape[0] - i));
                sum += torch.cdist(part, q).square().min(1).values.sum().item<double>();
            }
            return sum / p.shape[0];
        }
        return 0.5 * (Directed(x, y) + Directed(y, x));
    }

    /// <summary>
    /// Coverage, minimum matching distance and 1-NN accuracy of <paramref name="generated"/> against
    /// <paramref name="reference"/> under <paramref name="distance"/> (e.g. <see cref="Chamfer"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Either set has fewer than two items.</exception>
    public static SetComparison CompareSets<T>(IReadOnlyList<T> generated, IReadOnlyList<T> reference, Func<T, T, double> distance)
    {
        ArgumentNullException.ThrowIfNull(generated);
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(distance);
        int g = generated.Count, r = reference.Count;
        if (g < 2 || r < 2) throw new ArgumentException($"both sets need at least 2 items, got {g} generated and {r} reference.");
        var all = generated.Concat(reference).ToList();
        int n = g + r;
        var d = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                d[i, j] = d[j, i] = distance(all[i], all[j]);
        var covered = new HashSet<int>();
        for (int i = 0; i < g; i++)
        {
            int best = -1; double bd = double.PositiveInfinity;
            for (int j = 0; j < r; j++) if (d[i, g + j] < bd) { bd = d[i, g + j]; best = j; }
            covered.Add(best);
        }
        double mmd = 0;
        for (int j = 0; j < r; j++)
        {
            double bd = double.PositiveInfinity;
            for (int i = 0; i < g; i++) bd = Math.Min(bd, d[i, g + j]);
            mmd += bd;
        }
        int correct = 0;
        for (int i = 0; i < n; i++)
        {
            int best = -1; double bd = double.PositiveInfinity;
            for (int j = 0; j < n; j++) if (j != i && d[i, j] < bd) { bd = d[i, j]; best = j; }
            if ((best < g) == (i < g)) correct++;
        }
        return new SetComparison(covered.Count / (double)r, mmd / r, correct / (double)n);
    }

    /// <summary>
    /// Fréchet distance between Gaussians fitted to two feature sets <c>[N, D]</c> and <c>[M, D]</c> (as FID):
    /// ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁^½ Σ₂ Σ₁^½)^½), with symmetric matrix square roots by eigendecomposition (MathNet).
    /// </summary>
    /// <exception cref="ArgumentException">Not <c>[N, D]</c> / <c>[M, D]</c> with the same D and at least 2 rows each.</exception>
    public static double Frechet(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.shape[1] != b.shape[1] || a.shape[0] < 2 || b.shape[0] < 2)
            throw new ArgumentException($"expected feature sets [N >= 2, D] and [M >= 2, D], got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        var (m1, s1) = Moments(a);
        var (m2, s2) = Moments(b);
        var root1 = SymmetricSqrt(s1);
        var cross = SymmetricSqrt(root1 * s2 * root1);
        double meanTerm = (m1 - m2).DotProduct(m1 - m2);
        return Math.Max(0.0, meanTerm + s1.Trace() + s2.Trace() - 2 * cross.Trace());
    }

    private static (Vector<double> Mean, Matrix<double> Cov) Moments(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var t = x.detach().to(ScalarType.Float64).cpu().contiguous();
        long n = t.shape[0], d = t.shape[1];
        var data = t.data<double>().ToArray();
        var m = Matrix<double>.Build.Dense((int)n, (int)d, (i, j) => data[i * d + j]);
        var mean = m.ColumnSums() / n;
        var centred = m - Matrix<double>.Build.Dense((int)n, (int)d, (i, j) => mean[j]);
        return (mean, centred.TransposeThisAndMultiply(centred) / (n - 1));
    }

    private static Matrix<double> SymmetricSqrt(Matrix<double> s)
    {
        var sym = (s + s.Transpose()) / 2;
        var evd = sym.Evd(Symmetricity.Symmetric);
        var roots = evd.EigenValues.Map(c => Math.Sqrt(Math.Max(0.0, c.Real)));
        return evd.EigenVectors * Matrix<double>.Build.DenseOfDiagonalVector(roots) * evd.EigenVectors.Transpose();
    }
}
