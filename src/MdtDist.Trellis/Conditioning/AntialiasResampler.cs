using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// Separable antialiased resampling weights in the convention PyTorch's <c>F.interpolate(..., antialias=True)</c> and
/// PIL's <c>Image.resize</c> share: for output index i, with scale = in / out and support = s·max(scale, 1),
/// center = scale·(i + 0.5), the taps are j ∈ [max(trunc(center − support + 0.5), 0), min(trunc(center + support + 0.5), in)),
/// w_j = K((j − center + 0.5) / max(scale, 1)), normalised to sum 1 (at the borders the window is cut, not clamped).
/// </summary>
internal static class AntialiasResampler
{
    /// <summary>Keys' cubic with a = −0.5 (the antialiased bicubic of PyTorch and PIL); support 2.</summary>
    public static double Bicubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
        if (x < 2) return ((x - 5) * x + 8) * x * a - 4 * a;
        return 0;
    }

    /// <summary>
    /// The weight matrix <c>[outSize, inSize]</c> (float64) that maps a signal of length <paramref name="inSize"/> to
    /// <paramref name="outSize"/> samples.
    /// </summary>
    public static double[,] Weights(int inSize, int outSize, Func<double, double> kernel, double kernelSupport)
    {
        if (inSize < 1 || outSize < 1) throw new ArgumentException($"resampling sizes must be positive, got {inSize} -> {outSize}.");
        double scale = (double)inSize / outSize;
        double filterScale = Math.Max(scale, 1.0);
        double support = kernelSupport * filterScale;
        var w = new double[outSize, inSize];
        for (int i = 0; i < outSize; i++)
        {
            double center = scale * (i + 0.5);
            int lo = Math.Max((int)(center - support + 0.5), 0);
            int hi = Math.Min((int)(center + support + 0.5), inSize);
            double total = 0;
            for (int j = lo; j < hi; j++)
            {
                double v = kernel((j - center + 0.5) / filterScale);
                w[i, j] = v;
                total += v;
            }
            if (total != 0)
                for (int j = lo; j < hi; j++) w[i, j] /= total;
        }
        return w;
    }

    /// <summary>
    /// Resamples the grid <paramref name="grid"/> <c>[rows, cols, C]</c> to <c>[outRows, outCols, C]</c>, rows first then
    /// columns, with antialiased bicubic weights (PyTorch's <c>mode='bicubic', antialias=True</c>).
    /// </summary>
    public static Tensor BicubicAntialias(Tensor grid, int outRows, int outCols)
    {
        using var scope = torch.NewDisposeScope();
        int rows = (int)grid.shape[0], cols = (int)grid.shape[1];
        var wr = ToTensor(Weights(rows, outRows, Bicubic, 2.0), grid.dtype, grid.device);
        var wc = ToTensor(Weights(cols, outCols, Bicubic, 2.0), grid.dtype, grid.device);
        // [outRows, rows] x [rows, cols*C] -> then columns.
        var h = torch.matmul(wr, grid.reshape(rows, -1)).reshape(outRows, cols, -1);
        h = torch.einsum("jc,icd->ijd", wc, h);
        return h.contiguous().MoveToOuterDisposeScope();
    }

    private static Tensor ToTensor(double[,] w, ScalarType dtype, Device device)
    {
        int r = w.GetLength(0), c = w.GetLength(1);
        var flat = new double[r * c];
        Buffer.BlockCopy(w, 0, flat, 0, flat.Length * sizeof(double));
        return torch.tensor(flat, new long[] { r, c }, ScalarType.Float64).to(dtype).to(device);
    }
}
