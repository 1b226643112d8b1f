using MdtDist.TestSupport;
using System.Text.Json;
using MdtDist.Trellis.Pipeline;
using TrellisCpu;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Samples;

/// <summary>The TrellisCpu command at toy width: it runs every stage, writes both reports and extrapolates the teacher.</summary>
public class TrellisCpuSampleTests
{
    [Fact]
    public void TheCommandRunsEveryStageAndWritesTheTableAndJson()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-trelliscpu-").FullName;
        try
        {
            int rc = TrellisCpuApp.Run(new[] { "--tiny", "--dtype", "float32", "--threads", "1", "--voxels", "300", "--schedule", "student-1", "--out", dir });
            Assert.Equal(0, rc);
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "results.json")));
            var root = doc.RootElement;
            Assert.Equal("Float32", root.GetProperty("DType").GetString());
            long voxels = root.GetProperty("Voxels").GetInt64();
            // the shell closest to 300 voxels: within one radius step's growth of the target
            Assert.InRange(voxels, 150, 600);
            // the released Gaussian decoder config: 32 Gaussians per voxel
            Assert.Equal(32 * voxels, root.GetProperty("GaussianCount").GetInt64());
            var mesh = root.GetProperty("MeshSize").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            Assert.Equal(2, mesh.Length);
            Assert.True(mesh[0] > 0 && mesh[1] > 0, "the mesh extraction made a mesh");
            Assert.True(root.GetProperty("PeakResidentBytes").GetInt64() > 0 || !File.Exists("/proc/self/status"));

            var rows = root.GetProperty("Results").EnumerateArray().ToList();
            Assert.Equal(2, rows.Count);
            Assert.Equal("student-1", rows[0].GetProperty("Schedule").GetString());
            Assert.StartsWith("teacher", rows[1].GetProperty("Schedule").GetString());
            var student = rows[0].GetProperty("Stages").EnumerateArray().ToList();
            var teacher = rows[1].GetProperty("Stages").EnumerateArray().ToList();
            Assert.Equal(new[] { "image encoder (DINOv2)", "stage-1 flow", "structure decoder", "stage-2 flow", "Gaussian decoder", "mesh decoder", "mesh extraction (FlexiCubes)" },
                student.Select(s => s.GetProperty("Stage").GetString()));
            Assert.All(student, s => Assert.True(s.GetProperty("Measured").GetBoolean()));
            Assert.All(teacher, s => Assert.False(s.GetProperty("Measured").GetBoolean()));
            for (int i = 0; i < student.Count; i++)
            {
                double ws = student[i].GetProperty("WallSeconds").GetDouble(), wt = teacher[i].GetProperty("WallSeconds").GetDouble();
                int es = student[i].GetProperty("Evaluations").GetInt32(), et = teacher[i].GetProperty("Evaluations").GetInt32();
                Assert.True(ws > 0);
                // flows: 1 evaluation per student stage, 44 per teacher stage (19 guided steps × 2 + 6), time scaled by 44
                if (es > 0) { Assert.Equal(1, es); Assert.Equal(44, et); Assert.Equal(44 * ws, wt, 9); }
                else Assert.Equal(ws, wt);
            }
            var md = File.ReadAllText(Path.Combine(dir, "results.md"));
            Assert.Contains("| student-1 | 2 |", md);
            Assert.Contains("| teacher (extrapolated) | 88 |", md);
            Assert.Contains("VmHWM", md);
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void BadOptionsAreClearErrors()
    {
        Assert.Equal(3, TrellisCpuApp.Run(new[] { "--tiny", "--schedule", "student-7" }));
        Assert.Equal(3, TrellisCpuApp.Run(new[] { "--tiny", "--dtype", "int8" }));
        Assert.Equal(3, TrellisCpuApp.Run(new[] { "--tiny", "--voxels", "999999" }));
    }

    [Fact]
    public void TheShellHoldsTheRequestedVoxelsAndIsHollow()
    {
        var (coords, radius) = StructureShapes.ShellWithVoxelCount(20_000);
        using var _ = coords;
        Assert.InRange(coords.shape[0], 19_000, 21_000);
        Assert.True(radius > StructureShapes.Thickness && radius < 32);
        // no voxel near the centre (hollow), every voxel inside the grid, sample index 0
        var c = coords.to(ScalarType.Float64);
        var d = (c[.., 1..] - 31.5).pow(2).sum(1).sqrt();
        Assert.True(d.min().item<double>() >= radius - StructureShapes.Thickness - 1e-9);
        Assert.True(d.max().item<double>() < radius);
        Assert.Equal(0, coords[.., 0].abs().max().item<int>());
        Assert.Throws<ArgumentException>(() => StructureShapes.ShellWithVoxelCount(0));
    }
}

/// <summary>Native bf16 detection and the automatic compute dtype.</summary>
public class CpuFeaturesTests
{
    [Fact]
    public void AutoPicksBFloat16OnlyWithNativeSupport()
    {
        var withBf16 = new HashSet<string> { "avx2", "avx512f", "avx512_bf16" };
        var withAmx = new HashSet<string> { "amx_bf16", "amx_tile" };
        var without = new HashSet<string> { "avx2", "avx512f", "fma" };
        Assert.Equal(ScalarType.BFloat16, CpuFeatures.ResolveComputeDType("auto", withBf16));
        Assert.Equal(ScalarType.BFloat16, CpuFeatures.ResolveComputeDType("auto", withAmx));
        Assert.Equal(ScalarType.Float32, CpuFeatures.ResolveComputeDType("auto", without));
        Assert.Equal(ScalarType.Float32, CpuFeatures.ResolveComputeDType("auto", new HashSet<string>()));
        Assert.Equal(ScalarType.BFloat16, CpuFeatures.ResolveComputeDType("bf16", without));
        Assert.Equal(ScalarType.Float32, CpuFeatures.ResolveComputeDType("FLOAT32", withBf16));
        Assert.Equal(ScalarType.Float16, CpuFeatures.ResolveComputeDType("fp16", withBf16));
        var e = Assert.Throws<ArgumentException>(() => CpuFeatures.ResolveComputeDType("int8"));
        Assert.Contains("int8", e.Message);
    }

    [Fact]
    public void A16BitDTypeWithoutNativeSupportIsNamedAndFloat16IsRefusedByTheSample()
    {
        var zen4 = new HashSet<string> { "avx2", "avx512f", "avx512_bf16" };
        var sapphire = new HashSet<string> { "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile" };
        var granite = new HashSet<string> { "amx_fp16", "amx_bf16" };
        var old = new HashSet<string> { "avx2", "fma" };
        foreach (var flags in new[] { zen4, sapphire, granite, old })
        {
            Assert.Null(CpuFeatures.ReducedPrecisionWarning(ScalarType.Float32, flags));
            Assert.Null(CpuFeatures.ReducedPrecisionWarning(ScalarType.Float64, flags));
        }
        Assert.Null(CpuFeatures.ReducedPrecisionWarning(ScalarType.BFloat16, zen4));
        Assert.Contains("avx512_bf16", CpuFeatures.ReducedPrecisionWarning(ScalarType.BFloat16, old));
        Assert.Null(CpuFeatures.ReducedPrecisionWarning(ScalarType.Float16, sapphire));
        Assert.Null(CpuFeatures.ReducedPrecisionWarning(ScalarType.Float16, granite));
        Assert.Contains("avx512_fp16", CpuFeatures.ReducedPrecisionWarning(ScalarType.Float16, zen4));

        // the sample: float16 without native support is an error (exit code 3 from the command), bfloat16 only a warning
        var e = Assert.Throws<ArgumentException>(() => TrellisCpuApp.CheckComputeDType(ScalarType.Float16, zen4));
        Assert.StartsWith("float16 refused", e.Message);
        TrellisCpuApp.CheckComputeDType(ScalarType.Float16, sapphire);
        TrellisCpuApp.CheckComputeDType(ScalarType.BFloat16, old);
        TrellisCpuApp.CheckComputeDType(ScalarType.Float32, old);
    }

    [Fact]
    public void APipelineLoadedInA16BitDTypeTheCpuLacksLogsAWarning()
    {
        var zen4 = new HashSet<string> { "avx512f", "avx512_bf16" };
        var log = new ListLogger();
        TrellisPipeline.WarnIfSlowOnCpu(log, ScalarType.Float32, null, zen4);
        TrellisPipeline.WarnIfSlowOnCpu(log, ScalarType.BFloat16, CPU, zen4);
        TrellisPipeline.WarnIfSlowOnCpu(log, ScalarType.Float16, new Device(TorchSharp.DeviceType.CUDA, 0), zen4);   // not on the CPU
        Assert.Empty(log.Entries);
        TrellisPipeline.WarnIfSlowOnCpu(log, ScalarType.Float16, null, zen4);
        var (level, message) = Assert.Single(log.Entries);
        Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Warning, level);
        Assert.Contains("Float16", message);
        Assert.Contains("avx512_fp16", message);
    }

    [Fact]
    public void FlagsAreReadFromTheFirstProcessorOfACpuinfoFile()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n");
            var flags = CpuFeatures.ReadFlags(path);
            Assert.True(CpuFeatures.HasNativeBFloat16In(flags));
            Assert.Contains("avx2", flags);
            Assert.Empty(CpuFeatures.ReadFlags(path + ".missing"));
        }
        finally
        {
            File.Delete(path);
        }
    }
}

/// <summary>bfloat16 against float32 on every network of the pipeline (toy widths): within the format's bound.</summary>
public class TrellisCpuPrecisionTests
{
    [Fact]
    public void EveryNetworkInBFloat16StaysWithinTheFormatBound()
    {
        var results = PrecisionComparison.Run(NetworkScale.Tiny, ScalarType.BFloat16, blocks: null, voxels: 300, seed: 3);
        using var nets = TrellisCpuNetworks.Build(NetworkScale.Tiny, ScalarType.BFloat16, seed: 3);
        var layers = nets.All().ToDictionary(n => n.Name, n => MdtDist.TestSupport.ReducedPrecision.RoundedLayers(n.Module, ScalarType.BFloat16));
        Assert.Equal(layers.Keys.OrderBy(k => k), results.Select(r => r.Network).OrderBy(k => k));
        foreach (var r in results)
        {
            // bound 6·u·L with u = 2^-8 and L the network's rounded weight layers (derivation in ReducedPrecision); a broken
            // bf16 path (a wrong cast, garbage weights) gives an error of order 1
            double bound = MdtDist.TestSupport.ReducedPrecision.Tolerance(ScalarType.BFloat16, layers[r.Network]);
            Assert.True(r.RelativeError < Math.Min(bound, 0.5), $"{r.Network}: relative error {r.RelativeError:E2}, bound {bound:E2} ({layers[r.Network]} layers)");
            Assert.True(r.RelativeError > 0, $"{r.Network}: bfloat16 output identical to float32: the reduced dtype was not used");
        }
    }
}
