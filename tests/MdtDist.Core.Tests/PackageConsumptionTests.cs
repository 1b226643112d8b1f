using System.Diagnostics;
using System.IO.Compression;
using Xunit;
using Xunit.Abstractions;

namespace MdtDist.Core.Tests;

/// <summary>
/// The path users take: `dotnet pack` makes both packages; a fresh console project restores MdtDist.Core from a local
/// folder feed (plus nuget.org for TorchSharp-cpu), builds (which applies the package's libLibTorchSharp fix on old
/// distributions) and runs sampling code.
/// </summary>
public class PackageConsumptionTests(ITestOutputHelper output)
{
    private static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !File.Exists(Path.Combine(d.FullName, "MdtDist.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("cannot find the repository root (MdtDist.sln) above " + AppContext.BaseDirectory);
    }

    private string Run(string workDir, string args, int timeoutSeconds = 600)
    {
        var psi = new ProcessStartInfo("dotnet", args) { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove("MSBuildExtensionsPath");
        psi.Environment.Remove("MSBuildSDKsPath");
        psi.Environment.Remove("MSBUILD_EXE_PATH");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000)) { p.Kill(true); throw new TimeoutException($"dotnet {args} timed out"); }
        var text = stdout.Result + stderr.Result;
        output.WriteLine($"$ dotnet {args}\n{text}");
        Assert.True(p.ExitCode == 0, $"dotnet {args} failed with exit code {p.ExitCode}:\n{text}");
        return text;
    }

    private static void CopyDir(string from, string to)
    {
        foreach (var dir in Directory.GetDirectories(from, "*", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(from, dir);
            if (rel.Split(Path.DirectorySeparatorChar).Any(s => s is "bin" or "obj")) continue;
            Directory.CreateDirectory(Path.Combine(to, rel));
        }
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(from, file);
            if (rel.Split(Path.DirectorySeparatorChar).Any(s => s is "bin" or "obj")) continue;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(to, rel))!);
            File.Copy(file, Path.Combine(to, rel));
        }
    }

    [Fact]
    public void PackedCoreRestoresIntoAFreshConsoleProjectAndRuns()
    {
        var root = RepoRoot();
        var work = Directory.CreateTempSubdirectory("mdtdist-pack-").FullName;
        var version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmssfff");
        var nugetCache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        try
        {
            // Pack from a copy so this test never rebuilds the assemblies the test host has loaded.
            var src = Path.Combine(work, "repo");
            Directory.CreateDirectory(src);
            foreach (var f in new[] { "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props", "nuget.config", "README.md" })
                File.Copy(Path.Combine(root, f), Path.Combine(src, f));
            CopyDir(Path.Combine(root, "build"), Path.Combine(src, "build"));
            CopyDir(Path.Combine(root, "src"), Path.Combine(src, "src"));
            var feed = Path.Combine(work, "feed");
            Run(src, $"pack src/MdtDist.Core/MdtDist.Core.csproj -c Release -o \"{feed}\" -p:Version={version}");
            Run(src, $"pack src/MdtDist.Trellis/MdtDist.Trellis.csproj -c Release -o \"{feed}\" -p:Version={version}");
            var corePkg = Path.Combine(feed, $"MdtDist.Core.{version}.nupkg");
            Assert.True(File.Exists(corePkg));
            Assert.True(File.Exists(Path.Combine(feed, $"MdtDist.Trellis.{version}.nupkg")));
            using (var zip = ZipFile.OpenRead(corePkg))
            {
                var names = zip.Entries.Select(e => e.FullName).ToHashSet();
                Assert.Contains("lib/net10.0/MdtDist.Core.dll", names);
                Assert.Contains("lib/net10.0/MdtDist.Core.xml", names);
                Assert.Contains("README.md", names);
                Assert.Contains("buildTransitive/MdtDist.Core.targets", names);
                Assert.Contains("buildTransitive/ElfVersionPatcher.cs", names);
                using var nuspec = new StreamReader(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec")).Open());
                var spec = nuspec.ReadToEnd();
                Assert.Contains("<license type=\"expression\">MIT</license>", spec);
                Assert.Contains("<repository type=\"git\"", spec);
                Assert.Contains("<readme>README.md</readme>", spec);
                Assert.Contains("id=\"TorchSharp\"", spec);
                Assert.DoesNotContain("TorchSharp-cpu", spec);
            }

            var app = Path.Combine(work, "app");
            Directory.CreateDirectory(app);
            File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="local" value="{feed}" />
                    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
                  </packageSources>
                </configuration>
                """);
            File.WriteAllText(Path.Combine(app, "App.csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup>
                    <OutputType>Exe</OutputType>
                    <TargetFramework>net10.0</TargetFramework>
                    <Nullable>enable</Nullable>
                    <ImplicitUsings>enable</ImplicitUsings>
                  </PropertyGroup>
                  <ItemGroup>
                    <PackageReference Include="TorchSharp-cpu" Version="0.107.0" />
                  </ItemGroup>
                </Project>
                """);
            // Empty Directory.Build.* files stop MSBuild from importing the temp folder's parents.
            File.WriteAllText(Path.Combine(app, "Directory.Build.props"), "<Project />");
            File.WriteAllText(Path.Combine(app, "Directory.Build.targets"), "<Project />");
            File.WriteAllText(Path.Combine(app, "Program.cs"), """
                using MdtDist.Core.Flow;
                using MdtDist.Core.Sampling;
                using TorchSharp;
                var teacher = GaussianMixtureFlow.Ring();
                using var noise = torch.randn(new long[] { 256, 2 }, generator: new torch.Generator(1));
                using var r = new EulerSolver().Sample(teacher, Latent.Dense(noise), null, TimeGrid.Trellis(25, 3.0));
                var radius = r.Samples.norm(1).mean().item<float>();
                Console.WriteLine($"MEAN-RADIUS {radius:F2} EVALS {r.Evaluations}");
                """);
            Run(app, $"add package MdtDist.Core --version {version}");
            var text = Run(app, "run -c Release");
            var line = text.Split('\n').Single(l => l.StartsWith("MEAN-RADIUS"));
            var radius = double.Parse(line.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(radius, 3.6, 4.4);
            Assert.Contains("EVALS 25", line);
        }
        finally
        {
            try { Directory.Delete(work, true); } catch (IOException) { }
            foreach (var id in new[] { "mdtdist.core", "mdtdist.trellis" })
            {
                var d = Path.Combine(nugetCache, id, version);
                try { if (Directory.Exists(d)) Directory.Delete(d, true); } catch (IOException) { }
            }
        }
    }
}
