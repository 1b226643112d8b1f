using MdtDist.Build;
using TorchSharp;
using Xunit;

namespace MdtDist.Core.Tests.Native;

public class ElfVersionPatcherTests
{
    private static string Fixture => Path.Combine(AppContext.BaseDirectory, "TestData", "libelf_fixture.so");

    private static string TempCopy(string source)
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-elf-");
        var path = Path.Combine(dir.FullName, Path.GetFileName(source));
        File.Copy(source, path);
        return path;
    }

    [Fact]
    public void ReadsTheVersionNeedsOfTheFixture()
    {
        var needs = ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(Fixture));
        // As readelf -V prints for the checked-in fixture (see TestData/elf_fixture.cpp).
        var names = needs.Where(n => n.File == "libstdc++.so.6").Select(n => n.Version).ToList();
        Assert.Equal(new[] { "CXXABI_1.3", "GLIBCXX_3.4.21", "GLIBCXX_3.4.9", "CXXABI_1.3.9", "GLIBCXX_3.4" }, names);
        Assert.Contains(needs, n => n.File == "libc.so.6" && n.Version == "GLIBC_2.2.5");
        Assert.All(needs, n => Assert.False(n.IsWeak));
        var target = needs.Single(n => n.Version == "GLIBCXX_3.4.21");
        Assert.Equal(0x6d8 + 0x40 + 4, target.FlagsOffset);
    }

    [Fact]
    public void MarksExactlyOneRequirementWeakAndIsIdempotent()
    {
        var path = TempCopy(Fixture);
        var before = File.ReadAllBytes(path);
        Assert.Equal(ElfPatchResult.Patched, ElfVersionPatcher.MarkVersionNeedWeak(path, "libstdc++.so.6", "GLIBCXX_3.4.21"));
        var after = File.ReadAllBytes(path);
        Assert.Equal(before.Length, after.Length);
        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToList();
        Assert.Equal(new[] { 0x6d8 + 0x40 + 4 }, changed);
        Assert.Equal(before[changed[0]] | ElfVersionPatcher.VerFlagWeak, after[changed[0]]);
        var needs = ElfVersionPatcher.ReadVersionNeeds(after);
        Assert.True(needs.Single(n => n.Version == "GLIBCXX_3.4.21").IsWeak);
        Assert.Equal(1, needs.Count(n => n.IsWeak));
        Assert.Equal(ElfPatchResult.AlreadyWeak, ElfVersionPatcher.MarkVersionNeedWeak(path, "libstdc++.so.6", "GLIBCXX_3.4.21"));
        Assert.Equal(after, File.ReadAllBytes(path));
        Assert.Equal(ElfPatchResult.VersionNotRequired, ElfVersionPatcher.MarkVersionNeedWeak(path, "libstdc++.so.6", "GLIBCXX_3.4.32"));
        // The library still loads after the edit.
        if (OperatingSystem.IsLinux())
        {
            var h = System.Runtime.InteropServices.NativeLibrary.Load(path);
            Assert.NotEqual(IntPtr.Zero, System.Runtime.InteropServices.NativeLibrary.GetExport(h, "fixture_length"));
        }
    }

    [Fact]
    public void FailsLoudlyOnFilesThatAreNotAsExpected()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-elf-").FullName;
        var notElf = Path.Combine(dir, "not.so");
        File.WriteAllText(notElf, "this is not an ELF file at all, just some text padding it out to 64+ bytes......");
        Assert.Contains("no ELF magic", Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.MarkVersionNeedWeak(notElf, "libstdc++.so.6", "GLIBCXX_3.4.32")).Message);
        var truncated = Path.Combine(dir, "trunc.so");
        File.WriteAllBytes(truncated, File.ReadAllBytes(Fixture).Take(2000).ToArray());
        var e = Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.MarkVersionNeedWeak(truncated, "libstdc++.so.6", "GLIBCXX_3.4.32"));
        Assert.Contains("trunc.so", e.Message);
        var bytes = File.ReadAllBytes(Fixture);
        bytes[4] = 1; // 32-bit class
        var elf32 = Path.Combine(dir, "elf32.so");
        File.WriteAllBytes(elf32, bytes);
        Assert.Contains("EI_CLASS", Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.MarkVersionNeedWeak(elf32, "libstdc++.so.6", "GLIBCXX_3.4.32")).Message);
    }

    [Fact]
    public void SystemLibraryVersionDetectionReadsVerdefs()
    {
        if (!OperatingSystem.IsLinux()) return;
        // Every libstdc++ defines the base version GLIBCXX_3.4; none defines a made-up one.
        Assert.True(ElfVersionPatcher.SystemLibraryDefines("GLIBCXX_3.4"));
        Assert.False(ElfVersionPatcher.SystemLibraryDefines("GLIBCXX_9.9.99"));
        Assert.False(ElfVersionPatcher.SystemLibraryDefines("GLIBCXX_3.4", new[] { "/nonexistent-dir" }));
    }

    [Fact]
    public void BuildOutputCopyOfLibTorchSharpIsPatchedExactlyWhenTheSystemNeedsIt()
    {
        if (!OperatingSystem.IsLinux()) return;
        var output = Directory.GetFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).Single();
        var need = ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(output)).Single(n => n.Version == "GLIBCXX_3.4.32");
        bool systemHasIt = ElfVersionPatcher.SystemLibraryDefines("GLIBCXX_3.4.32");
        Assert.Equal(!systemHasIt, need.IsWeak);
        // The NuGet cache copy is never modified.
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var cached = Path.Combine(cache, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (File.Exists(cached))
            Assert.False(ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(cached)).Single(n => n.Version == "GLIBCXX_3.4.32").IsWeak);
        // And torch initialises in this process with it.
        using var x = torch.arange(4, dtype: torch.float64);
        Assert.Equal(6.0, x.sum().item<double>());
    }
}
