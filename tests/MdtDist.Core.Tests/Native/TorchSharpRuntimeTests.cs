using System.Diagnostics;
using System.Security.Cryptography;
using MdtDist.Build;
using MdtDist.Core.Native;
using Xunit;
using Xunit.Abstractions;

namespace MdtDist.Core.Tests.Native;

/// <summary>The run-time libLibTorchSharp fix used by notebooks and scripts (no build step).</summary>
public class TorchSharpRuntimeTests(ITestOutputHelper output)
{
    private static readonly bool SystemHasIt = ElfVersionPatcher.SystemLibraryDefines(TorchSharpRuntime.RequiredGlibcxx);

    private static string CachedLib()
    {
        var packages = TorchSharpRuntime.FindPackagesDirectory(out _);
        return Path.Combine(packages, "torchsharp", TorchSharpRuntime.TorchSharpVersion(), "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
    }

    private static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public void DoesNothingWhereTheSystemLibraryIsNewEnough()
    {
        var cache = Path.Combine(Path.GetTempPath(), "mdtdist-rt-" + Guid.NewGuid().ToString("N"));
        string? asked = null;
        var r = TorchSharpRuntime.EnsureLoadable(new TorchSharpRuntimeOptions { SystemLibraryDefines = v => { asked = v; return true; }, CacheDirectory = cache });
        Assert.Equal(TorchSharpLoadOutcome.SystemLibraryIsNewEnough, r.Outcome);
        Assert.Equal("GLIBCXX_3.4.32", asked);
        Assert.Null(r.LibraryPath);
        Assert.False(Directory.Exists(cache));
    }

    [Fact]
    public void LeavesABuiltApplicationToTheBuildTimeFix()
    {
        // This test host is a built app: TorchSharp-cpu put libLibTorchSharp.so into its output folder.
        var r = TorchSharpRuntime.EnsureLoadable(new TorchSharpRuntimeOptions { SystemLibraryDefines = _ => false, CacheDirectory = "/nonexistent-mdtdist" });
        Assert.Equal(TorchSharpLoadOutcome.BuildOutputHasNatives, r.Outcome);
    }

    [Fact]
    public void PreparesAPatchedPrivateCopyAndNeverTouchesTheNuGetCache()
    {
        var cached = CachedLib();
        Assert.True(File.Exists(cached), cached);
        var before = Sha(cached);
        var cache = Directory.CreateTempSubdirectory("mdtdist-rt-").FullName;
        try
        {
            var path = TorchSharpRuntime.Prepare(new TorchSharpRuntimeOptions { CacheDirectory = cache });
            Assert.StartsWith(cache, path);
            Assert.Equal(path, TorchSharpRuntime.Prepare(new TorchSharpRuntimeOptions { CacheDirectory = cache })); // reused
            var copy = ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(path)).Single(n => n.Version == "GLIBCXX_3.4.32");
            Assert.True(copy.IsWeak);
            Assert.False(ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(cached)).Single(n => n.Version == "GLIBCXX_3.4.32").IsWeak);
            Assert.Equal(before, Sha(cached));
            // The $ORIGIN dependencies are links into the NuGet cache, not copies.
            var torchCpu = new FileInfo(Path.Combine(Path.GetDirectoryName(path)!, "libtorch_cpu.so"));
            Assert.NotNull(torchCpu.LinkTarget);
            Assert.True(File.Exists(torchCpu.LinkTarget));
            Assert.Empty(Directory.GetDirectories(cache, ".*")); // no temporary folder left behind
        }
        finally { Directory.Delete(cache, true); }
    }

    [Fact]
    public void NamesTheMissingNuGetFolder()
    {
        var empty = Directory.CreateTempSubdirectory("mdtdist-rt-").FullName;
        try
        {
            var e = Assert.Throws<FileNotFoundException>(() => TorchSharpRuntime.Prepare(new TorchSharpRuntimeOptions { NuGetPackagesDirectory = empty, CacheDirectory = empty }));
            Assert.Contains(empty, e.Message);
            Assert.Contains("TorchSharp-cpu", e.Message);
        }
        finally { Directory.Delete(empty, true); }
    }

    private (int Code, string Text) Run(string workDir, string args, IDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo("dotnet", args) { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove("MSBuildExtensionsPath");
        psi.Environment.Remove("MSBuildSDKsPath");
        psi.Environment.Remove("MSBUILD_EXE_PATH");
        foreach (var kv in env ?? new Dictionary<string, string>()) psi.Environment[kv.Key] = kv.Value;
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(600_000)) { p.Kill(true); throw new TimeoutException($"dotnet {args} timed out"); }
        var text = so.Result + se.Result;
        output.WriteLine($"$ dotnet {args} (exit {p.ExitCode})\n{text}");
        return (p.ExitCode, text);
    }

    /// <summary>
    /// A fresh process with no native files next to it (a console app referencing TorchSharp without its native assets: the
    /// notebook situation, where TorchSharp.dll is loaded from the NuGet cache and nothing is copied next to the app): without the call TorchSharp cannot load its native library by name; with it, it can and computes.
    /// </summary>
    [Fact]
    public void AFreshProcessWithoutNativesLoadsTorchSharpOnlyWithTheCall()
    {
        var cached = CachedLib();
        var before = Sha(cached);
        var work = Directory.CreateTempSubdirectory("mdtdist-rt-app-").FullName;
        try
        {
            var core = typeof(TorchSharpRuntime).Assembly.Location;
            File.WriteAllText(Path.Combine(work, "Directory.Build.props"), "<Project />");
            File.WriteAllText(Path.Combine(work, "Directory.Build.targets"), "<Project />");
            File.WriteAllText(Path.Combine(work, "App.csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><ImplicitUsings>enable</ImplicitUsings><Nullable>enable</Nullable></PropertyGroup>
                  <ItemGroup>
                    <PackageReference Include="TorchSharp" Version="{TorchSharpRuntime.TorchSharpVersion()}" ExcludeAssets="native" />
                    <Reference Include="MdtDist.Core"><HintPath>{core}</HintPath></Reference>
                  </ItemGroup>
                </Project>
                """);
            File.WriteAllText(Path.Combine(work, "Program.cs"), """
                using TorchSharp;
                if (args.Length > 0 && args[0] == "fix")
                    Console.WriteLine("OUTCOME " + MdtDist.Core.Native.TorchSharpRuntime.EnsureLoadable().Outcome);
                Console.WriteLine("SUM " + torch.ones(2, 2).sum().item<float>());
                """);
            var (code, _) = Run(work, "build -c Release -o out");
            Assert.Equal(0, code);
            Assert.Empty(Directory.GetFiles(Path.Combine(work, "out"), "*.so", SearchOption.AllDirectories));

            // Without the call. NUGET_PACKAGES points at an empty folder so TorchSharp's fallback (copying ~0.5 GB of natives
            // next to the app) finds nothing; what is shown is that its load by name fails.
            var emptyPackages = Directory.CreateDirectory(Path.Combine(work, "no-packages")).FullName;
            var (c1, t1) = Run(work, "out/App.dll", new Dictionary<string, string> { ["NUGET_PACKAGES"] = emptyPackages });
            Assert.NotEqual(0, c1);
            Assert.Contains("Result from regular native load of LibTorchSharp is False", t1);
            Assert.DoesNotContain("SUM ", t1);

            // With the call (same environment as a notebook: the NuGet cache holds the natives).
            var (c2, t2) = Run(work, "out/App.dll fix", new Dictionary<string, string> { ["XDG_CACHE_HOME"] = Path.Combine(work, "xdg") });
            if (SystemHasIt)
            {
                Assert.Contains("OUTCOME SystemLibraryIsNewEnough", t2);
            }
            else
            {
                Assert.Equal(0, c2);
                Assert.Contains("OUTCOME LoadedPatchedCopy", t2);
                Assert.Contains("SUM 4", t2);
                Assert.Single(Directory.GetDirectories(Path.Combine(work, "xdg", "mdtdist", "native")));
            }
            Assert.Equal(before, Sha(cached));
        }
        finally
        {
            try { Directory.Delete(work, true); } catch (IOException) { }
        }
    }
}
