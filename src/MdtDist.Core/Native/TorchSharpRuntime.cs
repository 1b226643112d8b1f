using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Xml.Linq;
using MdtDist.Build;

namespace MdtDist.Core.Native;

/// <summary>What <see cref="TorchSharpRuntime.EnsureLoadable"/> did.</summary>
public enum TorchSharpLoadOutcome
{
    /// <summary>Not Linux: TorchSharp's own loading is used unchanged.</summary>
    NotLinux,
    /// <summary>The system libstdc++ defines the version libLibTorchSharp.so needs: nothing to do.</summary>
    SystemLibraryIsNewEnough,
    /// <summary>A libLibTorchSharp.so patched by the build-time fix lies in the application's folder (a built app): nothing to do.</summary>
    BuildOutputHasNatives,
    /// <summary>A patched private copy of libLibTorchSharp.so was loaded (or had been loaded by an earlier call).</summary>
    LoadedPatchedCopy,
}

/// <summary>The result of <see cref="TorchSharpRuntime.EnsureLoadable"/>.</summary>
/// <param name="Outcome">What was done.</param>
/// <param name="LibraryPath">The loaded patched copy (for <see cref="TorchSharpLoadOutcome.LoadedPatchedCopy"/>), otherwise null.</param>
/// <param name="Message">One line for a log or a notebook.</param>
public sealed record TorchSharpLoadResult(TorchSharpLoadOutcome Outcome, string? LibraryPath, string Message);

/// <summary>Settings of <see cref="TorchSharpRuntime.EnsureLoadable"/>; the defaults suit notebooks and scripts.</summary>
public sealed record TorchSharpRuntimeOptions
{
    /// <summary>
    /// Decides whether the system's libstdc++ defines a symbol version (argument: e.g. GLIBCXX_3.4.32). Default: read the
    /// first libstdc++.so.6 of the usual library folders.
    /// </summary>
    public Func<string, bool>? SystemLibraryDefines { get; init; }

    /// <summary>The NuGet global packages folder. Default: the one holding TorchSharp.dll, else NUGET_PACKAGES, else ~/.nuget/packages.</summary>
    public string? NuGetPackagesDirectory { get; init; }

    /// <summary>Where private copies are kept. Default: $XDG_CACHE_HOME/mdtdist/native, else ~/.cache/mdtdist/native.</summary>
    public string? CacheDirectory { get; init; }

    /// <summary>The folder of the libtorch natives (libtorch_cpu.so etc.). Default: libtorch-cpu-linux-x64 of the version TorchSharp-cpu names.</summary>
    public string? LibTorchNativeDirectory { get; init; }

    /// <summary>Do nothing when the application folder holds a libLibTorchSharp.so patched by the build-time fix (default true).</summary>
    public bool RespectBuildOutput { get; init; } = true;
}

/// <summary>
/// The run-time counterpart of the build-time libLibTorchSharp.so fix, for notebooks and scripts (no build step).
/// TorchSharp 0.107's libLibTorchSharp.so needs GLIBCXX_3.4.32, which Debian 12 and Ubuntu 22.04 lack. Call
/// <see cref="EnsureLoadable"/> once, before the first use of TorchSharp: where the system needs it, it builds a private folder
/// (under ~/.cache/mdtdist/native) with a copy of libLibTorchSharp.so whose GLIBCXX_3.4.32 requirement is marked weak and
/// symbolic links to the libtorch natives of the NuGet cache, and loads that copy. TorchSharp's later load of
/// "LibTorchSharp" by name then finds the loaded library. The NuGet cache is only read.
/// </summary>
public static class TorchSharpRuntime
{
    /// <summary>The symbol version TorchSharp 0.107's native library needs and older distributions lack.</summary>
    public const string RequiredGlibcxx = "GLIBCXX_3.4.32";
    private const string LibName = "libLibTorchSharp.so";
    private static readonly object Gate = new();
    private static TorchSharpLoadResult? loaded;

    /// <summary>
    /// Makes TorchSharp's native library loadable in this process, only where the system needs it (see the class remarks).
    /// Idempotent; call it before the first TorchSharp call (a notebook's first cell).
    /// </summary>
    /// <exception cref="FileNotFoundException">The TorchSharp or libtorch natives are not in the NuGet cache (the message names the folder looked in).</exception>
    /// <exception cref="DllNotFoundException">The patched copy could not be loaded (the message has the loader's reason).</exception>
    public static TorchSharpLoadResult EnsureLoadable(TorchSharpRuntimeOptions? options = null)
    {
        options ??= new TorchSharpRuntimeOptions();
        lock (Gate)
        {
            if (loaded != null) return loaded;
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
                return new TorchSharpLoadResult(TorchSharpLoadOutcome.NotLinux, null, "not Linux: TorchSharp loads its natives itself");
            var defines = options.SystemLibraryDefines ?? (v => ElfVersionPatcher.SystemLibraryDefines(v));
            if (defines(RequiredGlibcxx))
                return new TorchSharpLoadResult(TorchSharpLoadOutcome.SystemLibraryIsNewEnough, null, $"the system libstdc++ defines {RequiredGlibcxx}: nothing to do");
            if (options.RespectBuildOutput)
            {
                foreach (var dir in new[] { AppContext.BaseDirectory, Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native") })
                {
                    var local = Path.Combine(dir, LibName);
                    if (File.Exists(local) && IsPatched(local))
                        return new TorchSharpLoadResult(TorchSharpLoadOutcome.BuildOutputHasNatives, null, $"the application folder has a patched {LibName} ({local}; the build-time fix): nothing to do");
                }
            }
            var path = Prepare(options);
            try
            {
                NativeLibrary.Load(path);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                throw new DllNotFoundException($"MdtDist: cannot load the patched TorchSharp native library '{path}': {e.Message}", e);
            }
            loaded = new TorchSharpLoadResult(TorchSharpLoadOutcome.LoadedPatchedCopy, path, $"loaded a copy of {LibName} with the {RequiredGlibcxx} requirement marked weak: {path}");
            return loaded;
        }
    }

    private static bool IsPatched(string path)
    {
        try
        {
            return ElfVersionPatcher.ReadVersionNeeds(File.ReadAllBytes(path), path).Where(n => n.Version == RequiredGlibcxx).All(n => n.IsWeak);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>
    /// Builds (or finds) the private folder with the patched copy and the links and returns the copy's path; loads nothing.
    /// The folder name is a hash of the sources, so a new TorchSharp or libtorch gets a new folder.
    /// </summary>
    internal static string Prepare(TorchSharpRuntimeOptions options)
    {
        var packages = options.NuGetPackagesDirectory ?? FindPackagesDirectory(out _);
        var tsVersion = TorchSharpVersion();
        var source = Path.Combine(packages, "torchsharp", tsVersion, "runtimes", "linux-x64", "native", LibName);
        if (!File.Exists(source))
            throw new FileNotFoundException($"MdtDist: TorchSharp {tsVersion}'s {LibName} is not in the NuGet cache: expected '{source}'. Reference the TorchSharp package (e.g. #r \"nuget: TorchSharp-cpu, {tsVersion}\") first.", source);
        var libtorch = options.LibTorchNativeDirectory ?? FindLibTorchDirectory(packages, tsVersion);
        if (!File.Exists(Path.Combine(libtorch, "libtorch_cpu.so")))
            throw new FileNotFoundException($"MdtDist: no libtorch_cpu.so in the libtorch native folder '{libtorch}'.", Path.Combine(libtorch, "libtorch_cpu.so"));
        var natives = Directory.GetFiles(libtorch).Where(f => Path.GetFileName(f).Contains(".so", StringComparison.Ordinal)).OrderBy(f => f, StringComparer.Ordinal).ToArray();

        var key = new StringBuilder().Append(source).Append('|').Append(new FileInfo(source).Length).Append('|').Append(File.GetLastWriteTimeUtc(source).Ticks);
        foreach (var f in natives) key.Append('|').Append(f);
        var hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(key.ToString())))[..16].ToLowerInvariant();
        var root = options.CacheDirectory ?? DefaultCacheDirectory();
        var folder = Path.Combine(root, hash);
        var target = Path.Combine(folder, LibName);
        if (File.Exists(target)) return target;

        // Build in a temporary sibling and rename: a crash or a concurrent process never sees a half-made folder.
        Directory.CreateDirectory(root);
        var tmp = Path.Combine(root, $".{hash}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(tmp);
        try
        {
            foreach (var f in natives)
                File.CreateSymbolicLink(Path.Combine(tmp, Path.GetFileName(f)), f);
            var copy = Path.Combine(tmp, LibName);
            File.Copy(source, copy);
            ElfVersionPatcher.MarkVersionNeedWeak(copy, "libstdc++.so.6", RequiredGlibcxx);
            try { Directory.Move(tmp, folder); }
            catch (IOException) when (File.Exists(target)) { /* another process finished first */ }
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
        return target;
    }

    private static string DefaultCacheDirectory()
    {
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        var baseDir = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(baseDir, "mdtdist", "native");
    }

    /// <summary>The NuGet packages folder: the one holding TorchSharp.dll (notebooks), else NUGET_PACKAGES, else ~/.nuget/packages.</summary>
    internal static string FindPackagesDirectory(out bool fromAssembly)
    {
        // .../packages/torchsharp/<version>/lib/<tfm>/TorchSharp.dll
        var asmDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location);
        if (asmDir != null)
        {
            var versionDir = Directory.GetParent(asmDir)?.Parent;
            var idDir = versionDir?.Parent;
            if (idDir != null && string.Equals(idDir.Name, "torchsharp", StringComparison.OrdinalIgnoreCase) && idDir.Parent != null)
            {
                fromAssembly = true;
                return idDir.Parent.FullName;
            }
        }
        fromAssembly = false;
        var env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        return !string.IsNullOrEmpty(env) ? env : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
    }

    /// <summary>TorchSharp's NuGet version, from its informational version (e.g. 0.107.0).</summary>
    internal static string TorchSharpVersion()
    {
        var asm = typeof(TorchSharp.torch).Assembly;
        var info = asm.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        var v = (info ?? asm.GetName().Version?.ToString(3) ?? "").Split('+')[0];
        if (v.Length == 0) throw new InvalidOperationException("MdtDist: cannot tell TorchSharp's version from its assembly.");
        return v;
    }

    /// <summary>
    /// libtorch-cpu-linux-x64's native folder of the libtorch version that TorchSharp-cpu of <paramref name="tsVersion"/> names
    /// (its .nuspec), else of the highest version present.
    /// </summary>
    internal static string FindLibTorchDirectory(string packages, string tsVersion)
    {
        var pkg = Path.Combine(packages, "libtorch-cpu-linux-x64");
        string? version = null;
        var nuspec = Path.Combine(packages, "torchsharp-cpu", tsVersion, "torchsharp-cpu.nuspec");
        if (File.Exists(nuspec))
        {
            var doc = XDocument.Load(nuspec);
            version = doc.Descendants().Where(e => e.Name.LocalName == "dependency" && (string?)e.Attribute("id") == "libtorch-cpu")
                .Select(e => (string?)e.Attribute("version")).FirstOrDefault(v => v != null)?.Trim('[', ']', '(', ')');
        }
        if (version == null || !Directory.Exists(Path.Combine(pkg, version)))
        {
            version = Directory.Exists(pkg)
                ? Directory.GetDirectories(pkg).Select(Path.GetFileName).OfType<string>()
                    .Where(n => Version.TryParse(n.Split('-')[0], out _)).OrderByDescending(n => Version.Parse(n.Split('-')[0])).FirstOrDefault()
                : null;
        }
        if (version == null)
            throw new FileNotFoundException($"MdtDist: the libtorch CPU natives are not in the NuGet cache: no version under '{pkg}'. Reference TorchSharp-cpu (e.g. #r \"nuget: TorchSharp-cpu, {tsVersion}\") first.", pkg);
        return Path.Combine(pkg, version, "runtimes", "linux-x64", "native");
    }
}
