using MdtDist.Core.Flow;
using MdtDist.Core.Training;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Sparse;
using MiniTrellis.Data;
using MiniTrellis.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace MiniTrellis.Training;

/// <summary>
/// The flows' training data, as TRELLIS's dataset toolkit prepares it: every training shape encoded once by the VAEs
/// (posterior means): stage 1 gets the dense 4³×8 structure latents, stage 2 the per-voxel latents normalised per
/// channel (<see cref="SLatNormalization"/>). Batches depend only on the step number (exact resume).
/// </summary>
public sealed class FlowData : IDisposable
{
    private readonly Tensor _ss;
    private readonly int[] _classes;
    private readonly List<(int[] Voxels, float[] Feats)> _slat;

    private FlowData(Tensor ss, int[] classes, List<(int[], float[])> slat, SLatNormalization norm)
    {
        _ss = ss; _classes = classes; _slat = slat; Normalization = norm;
    }

    /// <summary>Number of training shapes.</summary>
    public int Count => _classes.Length;

    /// <summary>The per-channel normalisation applied to the stage-2 latents.</summary>
    public SLatNormalization Normalization { get; }

    /// <summary>
    /// Encodes the first <paramref name="count"/> training shapes. With <paramref name="computeNormalization"/> the
    /// stage-2 normalisation is measured on them (as TRELLIS does once for its dataset); otherwise the models' is used.
    /// </summary>
    public static FlowData Build(MiniTrellisModels m, int count, bool computeNormalization, IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default)
    {
        using var noGrad = torch.no_grad();
        const int chunk = 32;
        var ssParts = new List<Tensor>();
        var slat = new List<(int[], float[])>();
        var classes = new int[count];
        for (int start = 0; start < count; start += chunk)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var shapes = Enumerable.Range(start, Math.Min(chunk, count - start)).Select(i => ShapeDistribution.Training(i)).ToList();
            for (int i = 0; i < shapes.Count; i++) classes[start + i] = shapes[i].Class;
            var (_, mean, _) = m.StructureEncoder.Encode(ShapeTensors.Occupancy(shapes));
            ssParts.Add(mean.DetachFromDisposeScope());
            var enc = m.LatentEncoder.forward(ShapeTensors.Colors(shapes));
            var feats = enc.Mean.contiguous().data<float>().ToArray();
            int offset = 0;
            foreach (var s in shapes)
            {
                slat.Add((s.Voxels, feats[(offset * MiniTrellisModels.SlatChannels)..((offset + s.Count) * MiniTrellisModels.SlatChannels)]));
                offset += s.Count;
            }
            progress?.Report((Math.Min(count, start + chunk), count));
        }
        var ss = torch.cat(ssParts, 0);
        foreach (var p in ssParts) p.Dispose();
        var norm = m.Normalization;
        if (computeNormalization)
        {
            int c = MiniTrellisModels.SlatChannels;
            var mean = new double[c]; var sq = new double[c]; long n = 0;
            foreach (var (_, f) in slat)
                for (int i = 0; i < f.Length; i++) { mean[i % c] += f[i]; sq[i % c] += (double)f[i] * f[i]; if (i % c == 0) n++; }
            var std = new double[c];
            for (int k = 0; k < c; k++) { mean[k] /= n; std[k] = Math.Sqrt(Math.Max(1e-12, sq[k] / n - mean[k] * mean[k])); }
            norm = new SLatNormalization(mean, std);
        }
        for (int s = 0; s < slat.Count; s++)
        {
            var f = slat[s].Item2;
            for (int i = 0; i < f.Length; i++)
            {
                int k = i % MiniTrellisModels.SlatChannels;
                f[i] = (float)((f[i] - norm.Mean[k]) / norm.Std[k]);
            }
        }
        return new FlowData(ss, classes, slat, norm);
    }

    private int[] Pick(long step, int batch, long seed)
    {
        var rng = new Random(unchecked((int)(seed * 7919 + step * 104729)));
        return Enumerable.Range(0, batch).Select(_ => rng.Next(Count)).ToArray();
    }

    /// <summary>The stage-1 batch of step <paramref name="step"/>: structure latents <c>[B, 8, 4, 4, 4]</c> and their class tokens.</summary>
    public DistillationBatch StructureBatch(long step, int batch, long seed = 1)
    {
        var idx = Pick(step, batch, seed);
        using var i = torch.tensor(idx.Select(v => (long)v).ToArray());
        return new DistillationBatch(Latent.Dense(_ss.index_select(0, i)), ClassCondition.Tokens(idx.Select(k => _classes[k]).ToArray()));
    }

    /// <summary>The stage-2 batch of step <paramref name="step"/>: normalised latents on the shapes' voxels and their class tokens.</summary>
    public DistillationBatch LatentBatch(long step, int batch, long seed = 2)
    {
        var idx = Pick(step, batch, seed);
        var coords = new List<int>();
        var feats = new List<float>();
        for (int b = 0; b < idx.Length; b++)
        {
            var (v, f) = _slat[idx[b]];
            for (int j = 0; j < v.Length; j += 3) { coords.Add(b); coords.Add(v[j]); coords.Add(v[j + 1]); coords.Add(v[j + 2]); }
            feats.AddRange(f);
        }
        var st = new SparseTensor(torch.tensor(feats.ToArray(), new long[] { feats.Count / MiniTrellisModels.SlatChannels, MiniTrellisModels.SlatChannels }),
            torch.tensor(coords.ToArray(), new long[] { coords.Count / 4, 4 }, dtype: ScalarType.Int32), ShapeDistribution.Resolution, idx.Length);
        return new DistillationBatch(st.ToLatent(), ClassCondition.Tokens(idx.Select(k => _classes[k]).ToArray()));
    }

    /// <summary>Frees the latents.</summary>
    public void Dispose() => _ss.Dispose();
}
