using System.Text.Json.Nodes;
using MdtDist.Core.IO;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Representations;
using MdtDist.Trellis.Tests.Export;
using SharpGLTF.Schema2;
using TorchSharp;
using TrellisGenerate;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

public class MeshPipelineTests
{
    private const string MeshDecoderConfig = """{"name": "SLatMeshDecoder", "args": {"resolution": 16, "model_channels": 256, "latent_channels": 8, "num_blocks": 1, "num_heads": 4, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "pe_mode": "ape", "qk_rms_norm": false, "representation_config": {"use_color": true}}}""";

    private readonly ITestOutputHelper _out;

    public MeshPipelineTests(ITestOutputHelper output) => _out = output;

    private static SLatMeshDecoder TinyMeshDecoder(ScalarType dtype = ScalarType.Float32)
    {
        var node = JsonNode.Parse(MeshDecoderConfig)!.AsObject();
        return TinyPipeline.Randomize((SLatMeshDecoder)TrellisCheckpoint.Build(new TrellisModelConfig("SLatMeshDecoder", node["args"]!.AsObject()), dtype), 200);
    }

    private static TrellisPipeline WithMesh(TrellisPipeline p, SLatMeshDecoder mesh) =>
        new(p.StructureFlow, p.StructureDecoder, p.LatentFlow, p.GaussianDecoder, p.Normalization, p.StructureSampler, p.LatentSampler, meshDecoder: mesh);

    [Fact]
    public void DecodeStageGivesTheDecoderPlusFlexiCubesMeshPerSample()
    {
        using var scope = torch.NewDisposeScope();
        var pipeline = WithMesh(TinyPipeline.Create(ScalarType.Float64), TinyMeshDecoder(ScalarType.Float64));
        Assert.Equal(TrellisFormats.Gaussians | TrellisFormats.Mesh, pipeline.AvailableFormats);
        // two samples of 12 voxels each: a 3x2x2 block at different places of the 16³ grid
        var rows = new List<int>();
        foreach (var (b, ox) in new[] { (0, 5), (1, 8) })
            for (int x = 0; x < 3; x++) for (int y = 0; y < 2; y++) for (int z = 0; z < 2; z++) rows.AddRange(new[] { b, ox + x, 6 + y, 7 + z });
        var coords = torch.tensor(rows.ToArray(), new long[] { rows.Count / 4, 4 });
        var feats = torch.randn(new long[] { rows.Count / 4, 8 }, dtype: ScalarType.Float64, generator: new Generator(11));
        var slat = new MdtDist.Trellis.Sparse.SparseTensor(feats, coords, 16);
        using var both = pipeline.Decode(slat, TrellisFormats.Mesh | TrellisFormats.Gaussians);
        Assert.Equal(2, both.Meshes!.Count);
        Assert.Equal(2, both.Gaussians!.Count);
        var inputs = pipeline.MeshDecoder!.forward(slat);
        try
        {
            for (int b = 0; b < 2; b++)
            {
                var mesh = both.Meshes[b];
                _out.WriteLine($"sample {b}: {mesh.VertexCount} vertices, {mesh.FaceCount} faces");
                using var extracted = FlexiCubes.Extract(inputs[b]);
                Assert.True(extracted.Vertices.eq(mesh.Vertices).all().item<bool>());
                Assert.True(extracted.Faces.eq(mesh.Faces).all().item<bool>());
                Assert.True(extracted.VertexAttributes![.., 0..3].eq(mesh.Colors!).all().item<bool>());
                Assert.NotNull(mesh.Normals);
            }
        }
        finally
        {
            foreach (var i in inputs) i.Dispose();
        }
        using var meshOnly = pipeline.Decode(slat, TrellisFormats.Mesh);
        Assert.Null(meshOnly.Gaussians);
    }

    [Fact]
    public void RunDecodesMeshesOnlyWhenAsked()
    {
        using var scope = torch.NewDisposeScope();
        var pipeline = WithMesh(TinyPipeline.Create(), TinyMeshDecoder());
        TrellisRunOptions Options(TrellisFormats formats) => new()
        {
            Seed = 3, Formats = formats, StructureSampler = StageSampler.Student(1), LatentSampler = StageSampler.Student(1),
        };
        using var run = pipeline.Run(TinyPipeline.Condition(), Options(TrellisFormats.Mesh));
        var s = run.Samples.Single();
        Assert.False(s.IsEmpty, "the tiny pipeline produced an empty structure");
        Assert.Null(s.Gaussians);
        var mesh = s.Mesh!;
        _out.WriteLine($"{s.Coords.shape[0]} voxels → {mesh.VertexCount} vertices, {mesh.FaceCount} faces");
        Assert.NotNull(mesh.Colors);
        // FlexiCubes vertices stay within half a deformation step of the [-0.5, 0.5]³ box (mesh res 64)
        Assert.True(mesh.IsEmpty || mesh.Vertices.abs().max().item<float>() <= 0.5 + 0.5 / 64);
        using var gaussiansOnly = pipeline.Run(TinyPipeline.Condition(), Options(TrellisFormats.Gaussians));
        Assert.Null(gaussiansOnly.Samples.Single().Mesh);
        Assert.NotNull(gaussiansOnly.Samples.Single().Gaussians);
    }

    [Fact]
    public void DecodeWithoutAMeshDecoderIsAClearError()
    {
        using var scope = torch.NewDisposeScope();
        var pipeline = TinyPipeline.Create();
        Assert.Equal(TrellisFormats.Gaussians, pipeline.AvailableFormats);
        var slat = new MdtDist.Trellis.Sparse.SparseTensor(torch.zeros(1, 8), torch.zeros(1, 4, dtype: ScalarType.Int32), 16);
        var e = Assert.Throws<InvalidOperationException>(() => { pipeline.Decode(slat, TrellisFormats.Mesh).Dispose(); });
        Assert.Contains("slat_decoder_mesh", e.Message);
    }

    [Fact]
    public void FromFolderLoadsTheMeshDecoderNamedInPipelineJson()
    {
        using var scope = torch.NewDisposeScope();
        var dir = TinyPipeline.WriteFolder(TinyPipeline.Create());
        try
        {
            var mesh = TinyMeshDecoder();
            File.WriteAllText(Path.Combine(dir, "ckpts", "slat_dec_mesh.json"), MeshDecoderConfig);
            SafeTensors.Save(Path.Combine(dir, "ckpts", "slat_dec_mesh.safetensors"), mesh.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
            var pj = Path.Combine(dir, "pipeline.json");
            var json = JsonNode.Parse(File.ReadAllText(pj))!;
            json["args"]!["models"]!["slat_decoder_mesh"] = "ckpts/slat_dec_mesh";
            File.WriteAllText(pj, json.ToJsonString());

            var loaded = TrellisPipeline.FromFolder(dir);
            Assert.NotNull(loaded.MeshDecoder);
            Assert.True(loaded.MeshDecoder!.UseColor);
            Assert.Null(TrellisPipeline.FromFolder(dir, loadMeshDecoder: false).MeshDecoder);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void TrellisGenerateWritesAValidGlbPerSample()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-generate-glb-").FullName;
        try
        {
            var log = new StringWriter();
            int rc = TrellisGenerateApp.Run(new[] { "--random-tiny", "--image", Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "wide_input.png"), "--preview-size", "0", "--ss-steps", "1", "--slat-steps", "1", "--out", Path.Combine(dir, "t") }, log);
            _out.WriteLine(log.ToString());
            Assert.True(rc == 0, log.ToString());
            var glbs = Directory.GetFiles(dir, "*.glb");
            Assert.NotEmpty(glbs);
            foreach (var glb in glbs)
            {
                var model = ModelRoot.Load(glb);
                Assert.True(model.LogicalMeshes.Count <= 1);
                if (GltfValidator.Missing is { } why)
                {
                    Assert.False(GltfValidator.Required, $"glTF Validator required but missing: {why}");
                    _out.WriteLine($"glTF Validator missing ({why})");
                    continue;
                }
                var report = GltfValidator.Validate(glb);
                Assert.True(report.Errors == 0 && report.Warnings == 0, $"{Path.GetFileName(glb)}: {report}");
            }
            Assert.Contains(".glb", log.ToString());
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
