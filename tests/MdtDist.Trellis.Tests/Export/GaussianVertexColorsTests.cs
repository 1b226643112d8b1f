using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Export;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Tests.Pipeline;
using MdtDist.Trellis.Tests.Rendering;
using SharpGLTF.Schema2;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Mesh = MdtDist.Trellis.Representations.Mesh;

namespace MdtDist.Trellis.Tests.Export;

public class GaussianVertexColorsTests
{
    private static readonly double[] Red = { 0.9, 0.1, 0.1 }, Blue = { 0.1, 0.1, 0.9 };
    private readonly ITestOutputHelper _out;

    public GaussianVertexColorsTests(ITestOutputHelper output) => _out = output;

    /// <summary>Isotropic Gaussians on a regular grid of spacing <paramref name="h"/> filling [-0.5, 0.5]³: red for x &lt; 0, blue for x &gt; 0.</summary>
    private static Gaussians TwoHalves(double h, double opacity = 0.8)
    {
        var pos = new List<double[]>();
        int n = (int)Math.Round(1 / h);
        for (int i = 0; i < n; i++) for (int j = 0; j <= n; j++) for (int k = 0; k <= n; k++)
            pos.Add(new[] { -0.5 + (i + 0.5) * h, -0.5 + j * h, -0.5 + k * h });   // no centre on the plane x = 0
        return RenderTestData.Isotropic(pos.ToArray(), pos.Select(_ => h).ToArray(), pos.Select(_ => opacity).ToArray(),
            pos.Select(p => p[0] < 0 ? Red : Blue).ToArray());
    }

    /// <summary>A mesh whose vertices are <paramref name="count"/> seeded random points of [-0.45, 0.45]³ (faces: consecutive triples).</summary>
    private static Mesh RandomPoints(int count, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.rand(count, 3, dtype: ScalarType.Float64, generator: new Generator((ulong)seed)) * 0.9 - 0.45;
        var f = torch.arange(count / 3 * 3).view(-1, 3);
        return new Mesh(v, f);
    }

    [Fact]
    public void VerticesTakeTheColourOfTheirHalf()
    {
        using var scope = torch.NewDisposeScope();
        const double h = 0.05, sigma = 0.02;   // 3σ = 0.06 > h: every vertex has Gaussians within reach
        using var g = TwoHalves(h);
        using var mesh = RandomPoints(3000, 5);
        var c = GaussianVertexColors.Sample(mesh, g, sigma);
        Assert.Equal(new long[] { 3000, 3 }, c.shape);
        var x = mesh.Vertices[.., 0].data<double>().ToArray();
        var rgb = c.data<double>().ToArray();
        int red = 0, blue = 0, mixed = 0;
        for (int i = 0; i < x.Length; i++)
        {
            // every candidate of a vertex lies within 3σ: |x| > 3σ sees one half only, and any weighted mean of red and
            // blue keeps g = 0.1 and r + b = 1 (a convex combination; float64 sums of ≤ a few hundred terms: 1e-12)
            Assert.Equal(0.1, rgb[3 * i + 1], 1e-12);
            Assert.Equal(1.0, rgb[3 * i] + rgb[3 * i + 2], 1e-12);
            if (x[i] < -3 * sigma) { Assert.Equal(0.9, rgb[3 * i], 1e-12); red++; }
            else if (x[i] > 3 * sigma) { Assert.Equal(0.9, rgb[3 * i + 2], 1e-12); blue++; }
            else { Assert.InRange(rgb[3 * i], 0.1 - 1e-12, 0.9 + 1e-12); mixed++; }
            // and the side the vertex is on dominates (the nearer Gaussians weigh more; the grid is symmetric about x = 0)
            if (Math.Abs(x[i]) > 0.01) Assert.True(x[i] < 0 ? rgb[3 * i] > 0.5 : rgb[3 * i + 2] > 0.5, $"vertex {i} at x = {x[i]}");
        }
        _out.WriteLine($"{red} red, {blue} blue, {mixed} near the plane");
        Assert.True(red > 1000 && blue > 1000);
    }

    [Fact]
    public void WeightsAreOpacityTimesTheGaussianKernelWithinThreeSigma()
    {
        using var scope = torch.NewDisposeScope();
        const double sigma = 0.01;
        // vertex at the origin; Gaussians at distance 0.005 (α 0.3, red), 0.02 (α 0.9, blue), 0.0299 (α 0.5, green) and
        // 0.031 (> 3σ: ignored, α 0.99, white)
        double[][] pos = { new[] { 0.005, 0, 0 }, new[] { 0, -0.02, 0 }, new[] { 0, 0, 0.0299 }, new[] { -0.031, 0, 0 } };
        double[] alpha = { 0.3, 0.9, 0.5, 0.99 };
        double[][] col = { Red, Blue, new[] { 0.2, 0.7, 0.3 }, new[] { 1.0, 1.0, 1.0 } };
        using var g = RenderTestData.Isotropic(pos, new[] { 0.01, 0.01, 0.01, 0.01 }, alpha, col);
        using var mesh = new Mesh(torch.zeros(3, 3, dtype: ScalarType.Float64), torch.tensor(new long[] { 0, 1, 2 }).view(1, 3));
        var c = GaussianVertexColors.Sample(mesh, g, sigma).data<double>().ToArray();
        double[] w = new double[3];
        double[] d = { 0.005, 0.02, 0.0299 };
        for (int i = 0; i < 3; i++) w[i] = alpha[i] * Math.Exp(-d[i] * d[i] / (2 * sigma * sigma));
        for (int ch = 0; ch < 3; ch++)
        {
            double expected = (w[0] * col[0][ch] + w[1] * col[1][ch] + w[2] * col[2][ch]) / w.Sum();
            // the colours go through (c − 0.5)/C₀ and back and the opacities through a logit and a sigmoid: 1e-12
            Assert.Equal(expected, c[ch], 1e-12);
            Assert.Equal(c[ch], c[3 + ch]);
        }
    }

    [Fact]
    public void AVertexFarFromEveryGaussianTakesTheNearestOnesColour()
    {
        using var scope = torch.NewDisposeScope();
        double[][] pos = { new[] { 0.0, 0, 0 }, new[] { 0.2, 0.2, 0.2 } };
        using var g = RenderTestData.Isotropic(pos, new[] { 0.01, 0.01 }, new[] { 0.9, 0.1 }, new[] { Red, Blue });
        // (0.4, 0.4, 0.4) and (0.15, 0.15, 0.15) are nearest to the (nearly transparent) blue one, (-0.3, 0, 0) to the red
        // one; all three lie far beyond 3σ = 0.03 of every Gaussian
        var v = torch.tensor(new[] { 0.4, 0.4, 0.4, -0.3, 0, 0, 0.15, 0.15, 0.15 }, new long[] { 3, 3 }, ScalarType.Float64);
        using var mesh = new Mesh(v, torch.tensor(new long[] { 0, 1, 2 }).view(1, 3));
        var c = GaussianVertexColors.Sample(mesh, g, 0.01).data<double>().ToArray();
        for (int ch = 0; ch < 3; ch++)
        {
            Assert.Equal(Blue[ch], c[ch], 1e-12);
            Assert.Equal(Red[ch], c[3 + ch], 1e-12);
            Assert.Equal(Blue[ch], c[6 + ch], 1e-12);
        }
    }

    [Fact]
    public void AMeshFarFromItsGaussiansTakesEachVertexsNearestColour()
    {
        // every vertex beyond 3σ (the mesh shifted by 2 units, as with a mismatched frame): each takes the colour of the
        // Gaussian a brute-force argmin over all centres names (float64 distances, first index among equals)
        using var scope = torch.NewDisposeScope();
        using var g = RenderTestData.TrellisLike(3000, 5, ScalarType.Float64);
        using var near = RandomPoints(1500, 11);
        using var mesh = new Mesh(near.Vertices + torch.tensor(new[] { 2.0, -1.0, 0.5 }, ScalarType.Float64), near.Faces.clone());
        var c = GaussianVertexColors.Sample(mesh, g, 0.01);
        var pos = g.GetXyz().to(ScalarType.Float64);
        var rgb = (g.GetFeatures().reshape(-1, 3).to(ScalarType.Float64) * MdtDist.Trellis.Rendering.GaussianRasterizer.ShC0 + 0.5).clamp(0, 1);
        var brute = rgb.index_select(0, (mesh.Vertices.unsqueeze(1) - pos.unsqueeze(0)).square().sum(-1).argmin(1));
        Assert.True(RenderTestData.Same(brute, c));
    }

    [Fact]
    public void TheKdTreeAnswersAsABruteForceArgminDoes()
    {
        // random points, and a hostile set: many points on one spot, on one plane and on a coarse lattice (equal
        // coordinates and equal distances everywhere); ties go to the lowest index, as argmin's
        var rng = new Random(5);
        double[] Random3(int n, Func<double> f) => Enumerable.Range(0, 3 * n).Select(_ => f()).ToArray();
        var sets = new Dictionary<string, double[]>
        {
            ["uniform"] = Random3(4000, () => rng.NextDouble() - 0.5),
            ["one spot"] = Enumerable.Repeat(new[] { 0.1, 0.2, 0.3 }, 500).SelectMany(p => p).ToArray(),
            ["lattice"] = Random3(3000, () => Math.Round(rng.NextDouble() * 4) / 4),
            ["plane"] = Enumerable.Range(0, 2000).SelectMany(_ => new[] { rng.NextDouble(), rng.NextDouble(), 0.0 }).ToArray(),
            ["one point"] = new[] { 1.0, 2.0, 3.0 },
        };
        foreach (var (name, pts) in sets)
        {
            var tree = new PointKdTree(pts);
            int n = pts.Length / 3;
            Assert.Equal(n, tree.Count);
            for (int q = 0; q < 300; q++)
            {
                double x = Math.Round(rng.NextDouble() * 8 - 3) / 4, y = rng.NextDouble() * 3 - 1, z = q % 3 == 0 ? 0 : rng.NextDouble() - 0.5;
                int best = -1;
                double bestD2 = double.PositiveInfinity;
                for (int i = 0; i < n; i++)
                {
                    double dx = pts[3 * i] - x, dy = pts[3 * i + 1] - y, dz = pts[3 * i + 2] - z, d2 = dx * dx + dy * dy + dz * dz;
                    if (d2 < bestD2) (best, bestD2) = (i, d2);
                }
                Assert.True(best == tree.Nearest(x, y, z), $"{name}: query {q} ({x}, {y}, {z}): brute force {best}, tree {tree.Nearest(x, y, z)}");
            }
        }
        Assert.Equal(-1, new PointKdTree(Array.Empty<double>()).Nearest(0, 0, 0));
        Assert.Throws<ArgumentException>(() => new PointKdTree(new double[4]));
    }

    [Fact]
    public void ChunkingDoesNotChangeTheResult()
    {
        using var scope = torch.NewDisposeScope();
        using var g = RenderTestData.TrellisLike(5000, 3, ScalarType.Float64);
        using var mesh = RandomPoints(2000, 9);
        var whole = GaussianVertexColors.Sample(mesh, g, 0.02);
        var chunked = GaussianVertexColors.Sample(mesh, g, 0.02, 500, CancellationToken.None);   // many tiny chunks
        Assert.True(RenderTestData.Same(whole, chunked));
        Assert.True(whole.ge(0).all().item<bool>() && whole.le(1).all().item<bool>());
    }

    [Fact]
    public void BadInputsAreClearErrorsAndAnEmptyMeshGivesNoColours()
    {
        using var scope = torch.NewDisposeScope();
        using var mesh = RandomPoints(30, 1);
        using var none = new Gaussians(RenderTestData.Box);
        var e = Assert.Throws<ArgumentException>(() => GaussianVertexColors.Sample(mesh, none));
        Assert.Equal("gaussians", e.ParamName);
        using var g = RenderTestData.Isotropic(new[] { new[] { 0.0, 0, 0 } }, new[] { 0.01 }, new[] { 0.5 }, new[] { Red });
        Assert.Equal("bandwidth", Assert.Throws<ArgumentException>(() => GaussianVertexColors.Sample(mesh, g, 0)).ParamName);
        Assert.Equal("bandwidth", Assert.Throws<ArgumentException>(() => GaussianVertexColors.Sample(mesh, g, double.NaN)).ParamName);
        using var empty = Mesh.Empty(ScalarType.Float64);
        Assert.Equal(new long[] { 0, 3 }, GaussianVertexColors.Sample(empty, g).shape);
    }

    [Fact]
    public void PipelineColoursAColourlessMeshFromItsGaussians()
    {
        using var scope = torch.NewDisposeScope();
        var args = JsonNode.Parse("""{"resolution": 16, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"use_color": false}}""")!.AsObject();
        var decoder = TinyPipeline.Randomize((SLatMeshDecoder)TrellisCheckpoint.Build(new TrellisModelConfig("SLatMeshDecoder", args), ScalarType.Float64), 200);
        Assert.False(decoder.UseColor);
        var p = TinyPipeline.Create(ScalarType.Float64);
        var pipeline = new TrellisPipeline(p.StructureFlow, p.StructureDecoder, p.LatentFlow, p.GaussianDecoder, p.Normalization, p.StructureSampler, p.LatentSampler, meshDecoder: decoder);
        var rows = new List<int>();
        for (int x = 0; x < 3; x++) for (int y = 0; y < 2; y++) for (int z = 0; z < 2; z++) rows.AddRange(new[] { 0, 6 + x, 6 + y, 7 + z });
        var coords = torch.tensor(rows.ToArray(), new long[] { rows.Count / 4, 4 });
        var feats = torch.randn(new long[] { rows.Count / 4, 8 }, dtype: ScalarType.Float64, generator: new Generator(11));
        var slat = new MdtDist.Trellis.Sparse.SparseTensor(feats, coords, 16);

        using var meshOnly = pipeline.Decode(slat, TrellisFormats.Mesh);
        Assert.Null(meshOnly.Meshes!.Single().Colors);                 // no Gaussians: nothing to sample from
        using var both = pipeline.Decode(slat, TrellisFormats.Mesh | TrellisFormats.Gaussians);
        var mesh = both.Meshes!.Single();
        _out.WriteLine($"{mesh.VertexCount} vertices, {both.Gaussians!.Single().Count} Gaussians");
        Assert.False(mesh.IsEmpty);
        Assert.True(mesh.Vertices.eq(meshOnly.Meshes!.Single().Vertices).all().item<bool>());
        var expected = GaussianVertexColors.Sample(meshOnly.Meshes!.Single(), both.Gaussians!.Single());
        Assert.True(RenderTestData.Same(expected, mesh.Colors!));

        // and the GLB carries them
        var prim = ModelRoot.ReadGLB(new MemoryStream(MeshGlb.ToBytes(mesh))).LogicalMeshes.Single().Primitives.Single();
        Assert.Equal(mesh.VertexCount, prim.GetVertexAccessor("COLOR_0").Count);
    }
}
