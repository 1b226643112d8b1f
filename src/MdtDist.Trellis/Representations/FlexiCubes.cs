using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Representations;

/// <summary>
/// FlexiCubes surface extraction (dual marching cubes with learned weights) as TRELLIS's mesh representation runs it:
/// <c>SparseFeatures2Mesh</c> → <c>FlexiCubes.__call__</c> on the dense <c>(res+1)³</c> grid built from the mesh
/// decoder's cubes, with <c>weight_scale</c> 0.99.
/// </summary>
/// <remarks>
/// <para>The computation is the reference's, restricted to the cubes that can matter: outside the decoder's cubes the
/// dense grid is sdf 1 (outside), deform 0, colour 0 and weights 0, so every surface cube (1..7 corners with sdf &lt; 0)
/// has a corner among the cube vertices with negative sdf. The extraction enumerates the cubes around those vertices
/// instead of all <c>res³</c> cubes (TRELLIS's res is 256: 16.7M cubes), and looks up the background values where a
/// corner is not a cube vertex. Results, orders and arithmetic are the dense reference's.</para>
/// <para>Steps (per sample): surface cubes in increasing cube id; case id <c>Σ occ_k 2^k</c>, switched to the table's
/// alternative when the ambiguous neighbour named by <c>check_table</c> is a flagged surface cube too; surface edges
/// (unique corner pairs with exactly one corner inside, lexicographic); dual vertices grouped by vertices per cube
/// (ascending), each the β-weighted mean of the α-weighted edge crossings
/// <c>u = (x_a s_b α_b − x_b s_a α_a) / (s_b α_b − s_a α_a)</c>; colours interpolated the same way; one quad per surface
/// edge shared by 4 surface cubes, oriented towards positive sdf (quads whose first endpoint is outside first);
/// inference splits a quad along the diagonal with the larger γ product, training inserts a γ-weighted centre vertex
/// and makes 4 triangles.</para>
/// </remarks>
public static class FlexiCubes
{
    /// <summary>TRELLIS's <c>weight_scale</c>.</summary>
    public const double DefaultWeightScale = 0.99;

    /// <summary>Extracts the surface of one sample.</summary>
    /// <param name="inputs">The sample's extractor inputs (from <see cref="Models.SLatMeshDecoder"/>).</param>
    /// <param name="training">TRELLIS's <c>training</c> flag: 4 triangles per quad around a centre vertex, and the regularisers.</param>
    /// <param name="weightScale">Scale of the weight activations, in (0, 1].</param>
    /// <returns>The extraction; empty tensors (and <see cref="FlexiCubesResult.Success"/> false) when nothing is inside.</returns>
    public static FlexiCubesResult Extract(FlexiCubesInputs inputs, bool training = false, double weightScale = DefaultWeightScale)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (!(weightScale > 0 && weightScale <= 1))
            throw new ArgumentException($"weightScale must lie in (0, 1]; found {weightScale}", nameof(weightScale));
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = new Grid(inputs);
        var dt = g.Dtype;
        var dev = g.Device;
        int res = inputs.Resolution;

        // ---- surface cubes: every cube with a corner inside; all such corners are cube vertices with sdf < 0
        // Each phase runs in its own dispose scope and hands on only what later phases read: at TRELLIS's 256³ a random
        // decoder's surface has about a million cubes and the phases' int64 temporaries, all kept to the end, took 7.7 GB.
        var corners = CornerOffsets(dev);                                                   // [8, 3]
        Tensor surfIds, cornerIds, occ;
        using (var phase = torch.NewDisposeScope())
        {
            var negIds = g.VertexIds[g.Sdf.lt(0)];
            var negXyz = Decode(negIds, res + 1);
            var cand = (negXyz.unsqueeze(1) - corners.unsqueeze(0)).reshape(-1, 3);
            var inGrid = cand.ge(0).logical_and(cand.lt(res)).all(1);
            cand = cand[inGrid];
            var candIds = Encode(cand, res).unique(sorted: true).output;
            var candXyz = Decode(candIds, res);
            var cIds = Encode(candXyz.unsqueeze(1) + corners.unsqueeze(0), res + 1);      // [C, 8]
            var cOcc = g.SdfAt(cIds).lt(0);
            var count = cOcc.sum(1);
            var surf = count.gt(0).logical_and(count.lt(8));
            surfIds = candIds[surf].MoveToOuterDisposeScope();
            cornerIds = cIds[surf].MoveToOuterDisposeScope();
            occ = cOcc[surf].MoveToOuterDisposeScope();
        }
        long s = surfIds.shape[0];
        if (s == 0) return Empty(inputs, g, training);

        // ---- weights of the surface cubes (0 outside the sample's cubes)
        Tensor beta, alpha, gamma;
        using (var phase = torch.NewDisposeScope())
        {
            var raw = g.CubeWeightsAt(surfIds);                                              // [S, 21]
            beta = (torch.tanh(raw[.., 0..12]) * weightScale + 1).MoveToOuterDisposeScope();
            alpha = (torch.tanh(raw[.., 12..20]) * weightScale + 1).MoveToOuterDisposeScope();
            gamma = (torch.sigmoid(raw[.., 20]) * weightScale + (1 - weightScale) / 2).MoveToOuterDisposeScope();
        }

        // ---- case ids with the ambiguity fix
        var pow2 = torch.tensor(new long[] { 1, 2, 4, 8, 16, 32, 64, 128 }, device: dev);
        var caseIds = (occ.to(ScalarType.Int64) * pow2.unsqueeze(0)).sum(1);
        using (var phase = torch.NewDisposeScope())
        {
            var check = Table(FlexiCubesTables.CheckTable, dev).view(256, 5).index_select(0, caseIds);
            var flagged = check[.., 0].eq(1);
            var surfXyz = Decode(surfIds, res);
            var adj = surfXyz + check[.., 1..4];
            var inRange = adj.ge(0).logical_and(adj.lt(res)).all(1);
            var flaggedIds = surfIds[flagged];
            var adjFlagged = Contains(flaggedIds, Encode(adj.clamp(0, res - 1), res)).logical_and(inRange);
            caseIds = torch.where(flagged.logical_and(adjFlagged), check[.., 4], caseIds).MoveToOuterDisposeScope();
        }

        // ---- surface edges
        var cubeEdges = Table(FlexiCubesTables.CubeEdges, dev);                              // [24]
        long vTotal = (long)(res + 1) * (res + 1) * (res + 1);
        Tensor surfEdgeEntry, countsEntry, idxMap, surfEdges, edgesX, edgesS, zeroCrossing;
        Tensor? edgesC;
        using (var phase = torch.NewDisposeScope())
        {
            var allEdges = cornerIds.index_select(1, cubeEdges).reshape(-1, 2);              // [S*12, 2]
            var (uniq, inv, counts) = (allEdges[.., 0] * vTotal + allEdges[.., 1]).unique(sorted: true, return_inverse: true, return_counts: true);
            var uniqA = uniq.div(vTotal, RoundingMode.floor);
            var uniqB = uniq.remainder(vTotal);
            var maskEdges = g.SdfAt(uniqA).lt(0).to(ScalarType.Int64).add(g.SdfAt(uniqB).lt(0).to(ScalarType.Int64)).eq(1);
            surfEdgeEntry = maskEdges.index_select(0, inv!).MoveToOuterDisposeScope();
            countsEntry = counts!.index_select(0, inv!).MoveToOuterDisposeScope();
            var mapping = torch.full(uniq.shape[0], -1L, dtype: ScalarType.Int64, device: dev);
            long numSurfEdges = maskEdges.sum().item<long>();
            mapping[maskEdges] = torch.arange(numSurfEdges, dtype: ScalarType.Int64, device: dev);
            idxMap = mapping.index_select(0, inv!).MoveToOuterDisposeScope();              // [S*12]
            surfEdges = torch.stack(new[] { uniqA[maskEdges], uniqB[maskEdges] }, 1).MoveToOuterDisposeScope();   // [E, 2]
            var flatEdges = surfEdges.reshape(-1);
            edgesX = g.PositionsAt(flatEdges).reshape(-1, 2, 3).MoveToOuterDisposeScope();
            edgesS = g.SdfAt(flatEdges).reshape(-1, 2, 1).MoveToOuterDisposeScope();
            edgesC = g.HasColor ? torch.sigmoid(g.ColorsAt(flatEdges)).reshape(-1, 2, 6).MoveToOuterDisposeScope() : null;
            zeroCrossing = LinearInterp(edgesS, edgesX).MoveToOuterDisposeScope();          // [E, 3]
        }

        // ---- dual vertices, grouped by vertices per cube
        Tensor vd, vdIdxMap, vGamma;
        Tensor? vdColor = null, devLoss = null;
        long totalVd = 0;
        using (var phase = torch.NewDisposeScope())
        {
            var dmc = Table(FlexiCubesTables.DmcTable, dev).view(256, 4, 7);
            var numVd = Table(FlexiCubesTables.NumVdTable, dev).index_select(0, caseIds);
            var edgeGroup = new List<Tensor>();
            var toVd = new List<Tensor>();
            var toCube = new List<Tensor>();
            var vdNumEdges = new List<Tensor>();
            var vdGamma = new List<Tensor>();
            foreach (long num in numVd.unique(sorted: true).output.data<long>().ToArray())
            {
                if (num == 0) continue;
                var cubes = numVd.eq(num).nonzero().squeeze(1);                                 // ascending surface-cube index
                long c = cubes.shape[0];
                var group = dmc.index_select(0, caseIds.index_select(0, cubes))[.., ..(int)num].reshape(c, num * 7);
                var vdOf = (torch.arange(c * num, dtype: ScalarType.Int64, device: dev) + totalVd).unsqueeze(1).expand(c * num, 7).reshape(c, num * 7);
                var cubeOf = cubes.unsqueeze(1).expand(c, num * 7);
                var used = group.ne(-1);
                edgeGroup.Add(group.masked_select(used));
                toVd.Add(vdOf.masked_select(used));
                toCube.Add(cubeOf.masked_select(used));
                vdNumEdges.Add(used.reshape(-1, 7).sum(1));
                vdGamma.Add(gamma.index_select(0, cubes).repeat_interleave(num));
                totalVd += c * num;
            }
            var eg = torch.cat(edgeGroup);
            var egVd = torch.cat(toVd);
            var egCube = torch.cat(toCube);
            var numEdges = torch.cat(vdNumEdges);
            vGamma = torch.cat(vdGamma).MoveToOuterDisposeScope();
            var flat = egCube * 12 + eg;
            var idxGroup = idxMap.index_select(0, flat);
            if (idxGroup.numel() > 0 && idxGroup.min().item<long>() < 0)
                throw new InvalidOperationException("FlexiCubes: a dual vertex uses a cube edge without a sign change (inconsistent case tables).");
            var xGroup = edgesX.index_select(0, idxGroup);
            var sGroup = edgesS.index_select(0, idxGroup);
            var zcGroup = zeroCrossing.index_select(0, idxGroup);
            var alphaGroup = alpha.index_select(1, cubeEdges).reshape(-1, 2).index_select(0, flat).reshape(-1, 2, 1);
            var weightsGroup = sGroup * alphaGroup;
            var ueGroup = LinearInterp(weightsGroup, xGroup);
            var betaGroup = beta.reshape(-1).index_select(0, flat).reshape(-1, 1);
            var betaSum = torch.zeros(new[] { totalVd, 1L }, dtype: dt, device: dev).index_add(0, egVd, betaGroup, 1.0);
            vd = (torch.zeros(new[] { totalVd, 3L }, dtype: dt, device: dev).index_add(0, egVd, ueGroup * betaGroup, 1.0) / betaSum).MoveToOuterDisposeScope();
            if (edgesC is not null)
            {
                var ucGroup = LinearInterp(weightsGroup, edgesC.index_select(0, idxGroup));
                vdColor = (torch.zeros(new[] { totalVd, 6L }, dtype: dt, device: dev).index_add(0, egVd, ucGroup * betaGroup, 1.0) / betaSum).MoveToOuterDisposeScope();
            }
            if (training)
            {
                var dist = (zcGroup - vd.index_select(0, egVd)).norm(1);
                var meanL2 = torch.zeros(totalVd, dtype: dt, device: dev).index_add(0, egVd, dist, 1.0) / numEdges.to(dt);
                devLoss = (dist - meanL2.index_select(0, egVd)).abs().MoveToOuterDisposeScope();
            }
            vdIdxMap = torch.zeros(s * 12, dtype: ScalarType.Int64, device: dev).scatter(0, flat, egVd).MoveToOuterDisposeScope();
        }

        foreach (var done in new[] { cornerIds, occ, alpha, beta, gamma, edgesX, edgesS, zeroCrossing }) done.Dispose();
        edgesC?.Dispose();

        // ---- quads from surface edges shared by 4 surface cubes
        var groupMask = countsEntry.eq(4).logical_and(surfEdgeEntry);
        var grp = idxMap[groupMask];
        var vdIdx = vdIdxMap[groupMask];
        var (edgeIndices, order) = grp.sort(stable: true);
        var quad = vdIdx.index_select(0, order).reshape(-1, 4);
        var firstEdge = edgeIndices.reshape(-1, 4)[.., 0];
        var sFirst = g.SdfAt(surfEdges.index_select(0, firstEdge)[.., 0]);
        var flip = sFirst.gt(0);
        quad = torch.cat(new[]
        {
            quad[flip].index_select(1, torch.tensor(new long[] { 0, 1, 3, 2 }, device: dev)),
            quad[flip.logical_not()].index_select(1, torch.tensor(new long[] { 2, 3, 1, 0 }, device: dev)),
        });
        var qGamma = vGamma.index_select(0, quad.reshape(-1)).reshape(-1, 4);
        var g02 = qGamma[.., 0] * qGamma[.., 2];
        var g13 = qGamma[.., 1] * qGamma[.., 3];
        Tensor vertices, faces;
        Tensor? colors = vdColor;
        if (!training)
        {
            var split1 = quad.index_select(1, torch.tensor(new long[] { 0, 1, 2, 0, 2, 3 }, device: dev));
            var split2 = quad.index_select(1, torch.tensor(new long[] { 0, 1, 3, 3, 1, 2 }, device: dev));
            faces = torch.where(g02.gt(g13).unsqueeze(1), split1, split2).reshape(-1, 3);
            vertices = vd;
        }
        else
        {
            var vq = vd.index_select(0, quad.reshape(-1)).reshape(-1, 4, 3);
            var wsum = g02 + g13 + 1e-8;
            var center = ((vq[.., 0] + vq[.., 2]) / 2 * g02.unsqueeze(1) + (vq[.., 1] + vq[.., 3]) / 2 * g13.unsqueeze(1)) / wsum.unsqueeze(1);
            if (vdColor is not null)
            {
                var cq = vdColor.index_select(0, quad.reshape(-1)).reshape(-1, 4, 6);
                var cc = ((cq[.., 0] + cq[.., 2]) / 2 * g02.unsqueeze(1) + (cq[.., 1] + cq[.., 3]) / 2 * g13.unsqueeze(1)) / wsum.unsqueeze(1);
                colors = torch.cat(new[] { vdColor, cc });
            }
            long q = quad.shape[0];
            var centerIdx = torch.arange(q, dtype: ScalarType.Int64, device: dev) + totalVd;
            vertices = torch.cat(new[] { vd, center });
            var ring = quad.index_select(1, torch.tensor(new long[] { 0, 1, 1, 2, 2, 3, 3, 0 }, device: dev)).reshape(-1, 4, 2);
            faces = torch.cat(new[] { ring, centerIdx.reshape(-1, 1, 1).expand(q, 4, 1) }, -1).reshape(-1, 3);
        }

        return Finish(inputs, g, training, vertices, faces, colors, surfIds, caseIds, devLoss);
    }

    private static FlexiCubesResult Empty(FlexiCubesInputs inputs, Grid g, bool training)
    {
        var vertices = torch.zeros(new long[] { 0, 3 }, dtype: g.Dtype, device: g.Device);
        var faces = torch.zeros(new long[] { 0, 3 }, dtype: ScalarType.Int64, device: g.Device);
        var colors = g.HasColor ? torch.zeros(new long[] { 0, 6 }, dtype: g.Dtype, device: g.Device) : null;
        var none = torch.zeros(0, dtype: ScalarType.Int64, device: g.Device);
        return Finish(inputs, g, training, vertices, faces, colors, none, none.clone(),
            training ? torch.zeros(0, dtype: g.Dtype, device: g.Device) : null);
    }

    private static FlexiCubesResult Finish(FlexiCubesInputs inputs, Grid g, bool training, Tensor vertices, Tensor faces, Tensor? colors,
        Tensor surfIds, Tensor caseIds, Tensor? devLoss)
    {
        if (!training) return new FlexiCubesResult(vertices, faces, colors, surfIds, caseIds);
        // SparseFeatures2Mesh: reg_loss = con_loss (+ 0.5 mean L_dev when a mesh came out) + 0.2 mean |weights[:, :20]|
        var con = inputs.ConsistencyLoss.to(g.Dtype).clone();
        var reg = con.clone();
        if (vertices.shape[0] > 0 && faces.shape[0] > 0) reg = reg + devLoss!.mean() * 0.5;
        if (inputs.CubeCount > 0) reg = reg + inputs.CubeWeights[.., 0..20].abs().mean().to(g.Dtype) * 0.2;
        var tsdfV = inputs.DeformedVertices();
        var tsdfS = inputs.VertexAttributes[.., 0].clone();
        return new FlexiCubesResult(vertices, faces, colors, surfIds, caseIds, devLoss, con, reg, tsdfV, tsdfS);
    }

    /// <summary>FlexiCubes's <c>_linear_interp</c>: <c>(x_a w_b − x_b w_a) / (w_b − w_a)</c> along dim 1 of <c>[m, 2, k]</c>.</summary>
    private static Tensor LinearInterp(Tensor w, Tensor x)
    {
        var ww = torch.cat(new[] { w[.., 1..2], -w[.., 0..1] }, 1);
        return (x * ww).sum(1) / ww.sum(1);
    }

    private static Tensor CornerOffsets(Device dev)
    {
        var c = new long[24];
        for (int k = 0; k < 8; k++)
            for (int d = 0; d < 3; d++) c[3 * k + d] = FlexiCubesInputs.CubeCorners[k, d];
        return torch.tensor(c, new long[] { 8, 3 }, dtype: ScalarType.Int64, device: dev);
    }

    private static Tensor Table(ReadOnlySpan<short> values, Device dev)
    {
        var a = new long[values.Length];
        for (int i = 0; i < a.Length; i++) a[i] = values[i];
        return torch.tensor(a, dtype: ScalarType.Int64, device: dev);
    }

    /// <summary>Linear id <c>(x·n + y)·n + z</c> of integer coordinates <c>[..., 3]</c>.</summary>
    private static Tensor Encode(Tensor xyz, long n) => (xyz.select(-1, 0) * n + xyz.select(-1, 1)) * n + xyz.select(-1, 2);

    private static Tensor Decode(Tensor id, long n) =>
        torch.stack(new[] { id.div(n * n, RoundingMode.floor), id.div(n, RoundingMode.floor).remainder(n), id.remainder(n) }, -1);

    /// <summary>Whether each value of <paramref name="query"/> occurs in the increasing <paramref name="sorted"/>.</summary>
    private static Tensor Contains(Tensor sorted, Tensor query)
    {
        if (sorted.shape[0] == 0) return torch.zeros(query.shape, dtype: ScalarType.Bool, device: query.device);
        var pos = torch.searchsorted(sorted, query.contiguous()).clamp_max(sorted.shape[0] - 1);
        return sorted.index_select(0, pos.reshape(-1)).reshape(query.shape).eq(query);
    }

    /// <summary>The sample's values on the dense grids, looked up sparsely with the dense background elsewhere.</summary>
    private sealed class Grid
    {
        private readonly FlexiCubesInputs _in;
        private readonly Tensor _cubeIdsSorted, _cubeWeightsSorted;

        public Grid(FlexiCubesInputs inputs)
        {
            _in = inputs;
            VertexIds = inputs.VertexIds();                       // increasing (v_pos is lexicographic)
            Sdf = inputs.VertexAttributes[.., 0];
            var (sortedIds, perm) = inputs.CubeIds().sort();
            _cubeIdsSorted = sortedIds;
            _cubeWeightsSorted = inputs.CubeWeights.to(Dtype).index_select(0, perm);
        }

        public ScalarType Dtype => _in.VertexAttributes.dtype;

        public Device Device => _in.VertexAttributes.device;

        public bool HasColor => _in.UseColor;

        public Tensor VertexIds { get; }

        public Tensor Sdf { get; }

        /// <summary>Row of each grid vertex id among the cube vertices and whether it is one.</summary>
        private (Tensor Row, Tensor Found) Find(Tensor ids)
        {
            long v = VertexIds.shape[0];
            if (v == 0) return (torch.zeros_like(ids), torch.zeros(ids.shape, dtype: ScalarType.Bool, device: ids.device));
            var pos = torch.searchsorted(VertexIds, ids.reshape(-1).contiguous()).clamp_max(v - 1).reshape(ids.shape);
            var found = VertexIds.index_select(0, pos.reshape(-1)).reshape(ids.shape).eq(ids);
            return (pos, found);
        }

        /// <summary>The scalar field (1 away from the cube vertices).</summary>
        public Tensor SdfAt(Tensor ids)
        {
            var (row, found) = Find(ids);
            var val = Sdf.index_select(0, row.reshape(-1)).reshape(ids.shape);
            return torch.where(found, val, torch.ones_like(val));
        }

        /// <summary>Raw colours <c>[m, 6]</c> of flat grid ids (0 away from the cube vertices).</summary>
        public Tensor ColorsAt(Tensor ids)
        {
            var (row, found) = Find(ids);
            var val = _in.VertexAttributes[.., 4..10].index_select(0, row);
            return torch.where(found.unsqueeze(1), val, torch.zeros_like(val));
        }

        /// <summary>Deformed positions <c>[m, 3]</c> of flat grid ids (deform 0 away from the cube vertices).</summary>
        public Tensor PositionsAt(Tensor ids)
        {
            var (row, found) = Find(ids);
            var deform = _in.VertexAttributes[.., 1..4].index_select(0, row);
            deform = torch.where(found.unsqueeze(1), deform, torch.zeros_like(deform));
            long r1 = _in.Resolution + 1;
            return _in.Deformed(Decode(ids, r1), deform);
        }

        /// <summary>Raw weights <c>[m, 21]</c> of cube ids (0 away from the sample's cubes).</summary>
        public Tensor CubeWeightsAt(Tensor cubeIds)
        {
            long n = _cubeIdsSorted.shape[0];
            if (n == 0) return torch.zeros(new[] { cubeIds.shape[0], 21L }, dtype: Dtype, device: Device);
            var pos = torch.searchsorted(_cubeIdsSorted, cubeIds.contiguous()).clamp_max(n - 1);
            var found = _cubeIdsSorted.index_select(0, pos).eq(cubeIds);
            var val = _cubeWeightsSorted.index_select(0, pos);
            return torch.where(found.unsqueeze(1), val, torch.zeros_like(val));
        }
    }
}
