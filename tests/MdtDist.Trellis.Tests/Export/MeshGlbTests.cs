using System.Numerics;
using MdtDist.Trellis.Export;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Tests.Golden;
using SharpGLTF.Schema2;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Mesh = MdtDist.Trellis.Representations.Mesh;

namespace MdtDist.Trellis.Tests.Export;

public class MeshGlbTests
{
    private readonly ITestOutputHelper _out;

    public MeshGlbTests(ITestOutputHelper output) => _out = output;

    /// <summary>The first sample of the golden mesh decoder output (slat_dec_mesh → mesh_extract), extracted as at inference.</summary>
    internal static Mesh DecodedMesh(int item = 0)
    {
        using var scope = torch.NewDisposeScope();
        using var c = new GoldenCase(Path.Combine(GoldenParityTests.BundledDirectory, "mesh_extract.json"));
        var rows = c["in.coords"][.., 0].eq(item).nonzero().squeeze(1);
        using var fc = FlexiCubesInputs.FromFeatures(c["in.coords"].index_select(0, rows)[.., 1..], c["in.feats"].index_select(0, rows), 32, useColor: true);
        using var r = FlexiCubes.Extract(fc);
        return r.ToMesh();
    }

    [Fact]
    public void DecodedMeshGlbPassesTheValidatorAndReadsBack()
    {
        using var scope = torch.NewDisposeScope();
        using var mesh = DecodedMesh();
        var dir = Directory.CreateTempSubdirectory("mdtdist-glb-");
        try
        {
            var path = Path.Combine(dir.FullName, "decoded.glb");
            MeshGlb.Save(path, mesh);
            Validate(path);

            var model = ModelRoot.Load(path);
            var prim = model.LogicalMeshes.Single().Primitives.Single();
            var positions = prim.GetVertexAccessor("POSITION").AsVector3Array();
            var normals = prim.GetVertexAccessor("NORMAL").AsVector3Array();
            var colors = prim.GetVertexAccessor("COLOR_0").AsVector3Array();
            var tris = prim.GetTriangleIndices().ToList();
            // the extraction's faces are all distinct-index triangles on used vertices, so the counts carry over
            Assert.Equal(mesh.VertexCount, positions.Count);
            Assert.Equal(mesh.FaceCount, tris.Count);
            Assert.Equal(mesh.VertexCount, normals.Count);
            Assert.Equal(mesh.VertexCount, colors.Count);

            // TRELLIS's z-up → y-up rotation: (x, y, z) → (x, z, −y); float32 rounding only (|v| ≤ 0.51 → 6e-8)
            var v = mesh.Vertices.data<double>().ToArray();
            for (int i = 0; i < positions.Count; i++)
            {
                Assert.Equal(v[3 * i], positions[i].X, 1e-6);
                Assert.Equal(v[3 * i + 2], positions[i].Y, 1e-6);
                Assert.Equal(-v[3 * i + 1], positions[i].Z, 1e-6);
                Assert.Equal(1.0, normals[i].Length(), 1e-5);
            }
            var f = mesh.Faces.data<long>().ToArray();
            for (int i = 0; i < tris.Count; i++)
                Assert.Equal((f[3 * i], f[3 * i + 1], f[3 * i + 2]), ((long)tris[i].A, (long)tris[i].B, (long)tris[i].C));
            // colours: sRGB → linear of the decoder's RGB channels
            var c = mesh.Colors!.data<double>().ToArray();
            double Lin(double s) => s <= 0.04045 ? s / 12.92 : Math.Pow((s + 0.055) / 1.055, 2.4);
            for (int i = 0; i < colors.Count; i++) Assert.Equal(Lin(c[3 * i + 1]), colors[i].Y, 1e-6);
        }
        finally
        {
            dir.Delete(true);
        }
    }

    [Fact]
    public void SimplifiedGlbPassesTheValidatorWithAtMostTheTargetFaces()
    {
        using var scope = torch.NewDisposeScope();
        using var mesh = DecodedMesh(1);
        var dir = Directory.CreateTempSubdirectory("mdtdist-glb-");
        try
        {
            var path = Path.Combine(dir.FullName, "simplified.glb");
            long target = mesh.FaceCount / 4;
            MeshGlb.Save(path, mesh, new GlbExportOptions { TargetFaceCount = target });
            Validate(path);
            var tris = ModelRoot.Load(path).LogicalMeshes.Single().Primitives.Single().GetTriangleIndices().Count();
            _out.WriteLine($"{mesh.FaceCount} faces → {tris} (target {target})");
            Assert.InRange(tris, target * 9 / 10, target);
        }
        finally
        {
            dir.Delete(true);
        }
    }

    [Fact]
    public void EmptyMeshGivesAValidGlbWithoutAMesh()
    {
        using var scope = torch.NewDisposeScope();
        using var empty = Mesh.Empty();
        var dir = Directory.CreateTempSubdirectory("mdtdist-glb-");
        try
        {
            var path = Path.Combine(dir.FullName, "empty.glb");
            MeshGlb.Save(path, empty);
            Validate(path);
            var model = ModelRoot.Load(path);
            Assert.Empty(model.LogicalMeshes);
            Assert.Single(model.LogicalNodes);

            // only degenerate faces: the same (nothing drawable is left)
            using var degenerate = new Mesh(torch.rand(3, 3, generator: new Generator(3)), torch.tensor(new long[] { 0, 1, 1, 2, 2, 2 }).view(2, 3));
            MeshGlb.Save(path, degenerate);
            Validate(path);
            Assert.Empty(ModelRoot.Load(path).LogicalMeshes);
        }
        finally
        {
            dir.Delete(true);
        }
    }

    [Fact]
    public void DegenerateFacesAndUnusedVerticesAreDroppedOnExport()
    {
        using var scope = torch.NewDisposeScope();
        // a tetrahedron, plus a face repeating a vertex and an unused 5th vertex
        var v = torch.tensor(new double[] { 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 5, 5, 5 }, new long[] { 5, 3 });
        var f = torch.tensor(new long[] { 0, 2, 1, 0, 1, 3, 1, 2, 3, 0, 3, 2, 1, 1, 3 }, new long[] { 5, 3 });
        using var mesh = new Mesh(v, f);
        var dir = Directory.CreateTempSubdirectory("mdtdist-glb-");
        try
        {
            var path = Path.Combine(dir.FullName, "tet.glb");
            MeshGlb.Save(path, mesh, new GlbExportOptions { ZUpToYUp = false });
            Validate(path);
            var prim = ModelRoot.Load(path).LogicalMeshes.Single().Primitives.Single();
            Assert.Equal(4, prim.GetVertexAccessor("POSITION").Count);
            Assert.Equal(4, prim.GetTriangleIndices().Count());
            Assert.Null(prim.GetVertexAccessor("COLOR_0"));
        }
        finally
        {
            dir.Delete(true);
        }
    }

    [Fact]
    public void AFailedExportLeavesTheExistingFileUntouched()
    {
        using var scope = torch.NewDisposeScope();
        using var mesh = DecodedMesh();
        var dir = Directory.CreateTempSubdirectory("mdtdist-glb-");
        try
        {
            var path = Path.Combine(dir.FullName, "keep.glb");
            File.WriteAllText(path, "previous");
            var ex = Assert.Throws<ArgumentException>(() => MeshGlb.Save(path, mesh, new GlbExportOptions { TargetFaceCount = 0 }));
            Assert.Contains("TargetFaceCount", ex.Message);
            Assert.Equal("previous", File.ReadAllText(path));
            Assert.Single(Directory.GetFiles(dir.FullName));   // no temp file left
        }
        finally
        {
            dir.Delete(true);
        }
    }

    private void Validate(string path)
    {
        if (GltfValidator.Missing is { } why)
        {
            Assert.False(GltfValidator.Required, $"glTF Validator required (MDTDIST_REQUIRE_GLTF_VALIDATOR=1) but missing: {why}");
            _out.WriteLine($"glTF Validator missing ({why}): only the SharpGLTF read-back ran for {Path.GetFileName(path)}");
            return;
        }
        var report = GltfValidator.Validate(path);
        _out.WriteLine($"{Path.GetFileName(path)}: {report}");
        Assert.True(report.Errors == 0 && report.Warnings == 0, $"{Path.GetFileName(path)}: {report}");
    }
}
