using MdtDist.Trellis.Models;
using MdtDist.Trellis.Sparse;
using MiniTrellis.Data;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MiniTrellis.Training;

/// <summary>A training report: step, total steps, loss, and a quality figure (IoU or colour error).</summary>
public sealed record TrainReport(int Step, int Total, double Loss, double Quality);

/// <summary>
/// The two autoencoders of the miniature (not flows, so not the flow-matching trainer's job): the structure VAE (occupancy
/// ↔ 4³ latent; weighted BCE + KL as TRELLIS's SS VAE) and the structured-latent VAE (per-voxel RGB → latent →
/// one Gaussian per voxel whose colour, position, size and opacity are supervised).
/// </summary>
public static class AutoencoderTraining
{
    /// <summary>Target size of a decoded Gaussian: 0.6 voxel (in unit-cube units).</summary>
    public const double SplatScale = 0.6 / ShapeDistribution.Resolution;

    /// <summary>Target opacity of a decoded Gaussian.</summary>
    public const double SplatOpacity = 0.95;

    /// <summary>SH degree-0 constant: colour = 0.5 + C0 · f_dc.</summary>
    public const double ShC0 = 0.28209479177387814;

    /// <summary>Trains the structure VAE on training shapes; returns the final IoU of thresholded reconstructions.</summary>
    public static double TrainStructureVae(SparseStructureEncoder enc, SparseStructureDecoder dec, int steps, int batch, IProgress<TrainReport>? progress, CancellationToken ct)
    {
        var ps = enc.parameters().Concat(dec.parameters()).ToList();
        using var opt = torch.optim.AdamW(ps, 2e-3, weight_decay: 0);
        using var g = new Generator(11);
        enc.train(); dec.train();
        double iou = 0;
        for (int step = 0; step < steps; step++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var shapes = Enumerable.Range(0, batch).Select(i => ShapeDistribution.Training((long)step * batch + i)).ToList();
            var x = ShapeTensors.Occupancy(shapes);
            var (z, mean, logvar) = enc.Encode(x, samplePosterior: true, generator: g);
            var logits = dec.forward(z);
            // Shell voxels are ~5% of the grid: weight positives so that both kinds of error count.
            var bce = F.binary_cross_entropy_with_logits(logits, x, pos_weights: torch.tensor(4f));
            var kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean();
            var loss = bce + 1e-3 * kl;
            opt.zero_grad();
            loss.backward();
            torch.nn.utils.clip_grad_norm_(ps, 1.0);
            opt.step();
            using (torch.no_grad())
            {
                var pred = logits.gt(0);
                var truth = x.gt(0.5);
                iou = pred.logical_and(truth).sum().item<long>() / (double)Math.Max(1, pred.logical_or(truth).sum().item<long>());
            }
            progress?.Report(new TrainReport(step + 1, steps, loss.item<float>(), iou));
        }
        enc.eval(); dec.eval();
        return iou;
    }

    /// <summary>
    /// Trains the structured-latent VAE: encoder (RGB per voxel → posterior) and Gaussian decoder (latent → 1 Gaussian
    /// per voxel). Loss: colour MSE (0.5 + C0·f_dc vs the voxel colour) + position offsets towards the voxel centre +
    /// raw scaling / opacity towards <see cref="SplatScale"/> / <see cref="SplatOpacity"/> + 1e-4 KL. Returns the final
    /// mean absolute colour error.
    /// </summary>
    public static double TrainLatentVae(SLatEncoder enc, SLatGaussianDecoder dec, int steps, int batch, IProgress<TrainReport>? progress, CancellationToken ct)
    {
        var ps = enc.parameters().Concat(dec.parameters()).ToList();
        using var opt = torch.optim.AdamW(ps, 2e-3, weight_decay: 0);
        using var g = new Generator(12);
        enc.train(); dec.train();
        double scaleRaw = InverseSoftplus(SplatScale) - InverseSoftplus(dec.Representation.ScalingBias);
        double opacityRaw = Logit(SplatOpacity) - Logit(dec.Representation.OpacityBias);
        double err = 0;
        for (int step = 0; step < steps; step++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var shapes = Enumerable.Range(0, batch).Select(i => ShapeDistribution.Training(5_000_000 + (long)step * batch + i)).ToList();
            var x = ShapeTensors.Colors(shapes);
            var z = enc.Encode(x, samplePosterior: true, generator: g);
            var f = dec.ForwardFeatures(z.Z).Feats;
            var rgb = 0.5 + ShC0 * f[.., 3..6];
            var colour = (rgb - x.Feats).square().mean();
            var offsets = f[.., 0..3].square().mean();
            var scale = (f[.., 6..9] - scaleRaw).square().mean();
            var opacity = (f[.., 13..14] - opacityRaw).square().mean();
            var kl = 0.5 * (z.Mean.square() + z.LogVar.exp() - 1 - z.LogVar).mean();
            var loss = colour * 10 + 0.1 * (offsets + scale + opacity) + 1e-4 * kl;
            opt.zero_grad();
            loss.backward();
            torch.nn.utils.clip_grad_norm_(ps, 1.0);
            opt.step();
            err = (rgb.detach() - x.Feats).abs().mean().item<float>();
            progress?.Report(new TrainReport(step + 1, steps, loss.item<float>(), err));
        }
        enc.eval(); dec.eval();
        return err;
    }

    /// <summary>Decoded colours (RGB in [0, 1] per voxel) of a structured latent through the Gaussian decoder.</summary>
    public static Tensor DecodeColors(SLatGaussianDecoder dec, SparseTensor latent)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var f = dec.ForwardFeatures(latent).Feats;
        return (0.5 + ShC0 * f[.., 3..6]).clamp(0, 1).MoveToOuterDisposeScope();
    }

    private static double InverseSoftplus(double y) => Math.Log(Math.Exp(y) - 1);

    private static double Logit(double p) => Math.Log(p / (1 - p));
}
