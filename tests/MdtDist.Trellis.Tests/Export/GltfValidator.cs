using System.Diagnostics;
using System.Text.Json;

namespace MdtDist.Trellis.Tests.Export;

/// <summary>
/// Runs the Khronos glTF Validator (npm package <c>gltf-validator</c>, installed by <c>npm ci</c> in
/// <c>tools/gltf-validator</c>) with Node on a file. <see cref="Missing"/> says why it cannot run; with
/// <c>MDTDIST_REQUIRE_GLTF_VALIDATOR=1</c> (set by <c>.ci/run</c>) a missing validator fails the tests instead.
/// </summary>
internal static class GltfValidator
{
    private static readonly Lazy<(string? Script, string? Why)> Location = new(Locate);

    /// <summary>Null when the validator can run; otherwise what is missing.</summary>
    public static string? Missing => Location.Value.Why;

    public static bool Required => Environment.GetEnvironmentVariable("MDTDIST_REQUIRE_GLTF_VALIDATOR") == "1";

    /// <summary>The validator's report of <paramref name="path"/>.</summary>
    public static Report Validate(string path)
    {
        var script = Location.Value.Script ?? throw new InvalidOperationException("glTF Validator missing: " + Missing);
        var psi = new ProcessStartInfo("node") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add(path);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("gltf-validator did not finish in 120 s"); }
        if (p.ExitCode != 0) throw new InvalidOperationException($"gltf-validator exited with {p.ExitCode}: {stderr.Result}");
        return new Report(stdout.Result);
    }

    private static (string?, string?) Locate()
    {
        string? dir = AppContext.BaseDirectory;
        string? script = null;
        while (dir is not null)
        {
            var candidate = Path.Combine(dir, "tools", "gltf-validator", "validate.mjs");
            if (File.Exists(candidate)) { script = candidate; break; }
            dir = Path.GetDirectoryName(dir);
        }
        if (script is null) return (null, "tools/gltf-validator/validate.mjs not found above the test folder");
        if (!File.Exists(Path.Combine(Path.GetDirectoryName(script)!, "node_modules", "gltf-validator", "package.json")))
            return (null, "the npm package is not installed: run `npm ci` in tools/gltf-validator");
        try
        {
            var psi = new ProcessStartInfo("node", "--version") { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            p.WaitForExit(30_000);
            if (p.ExitCode != 0) return (null, "`node --version` failed");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return (null, "Node.js (`node`) is not on PATH (Debian: apt-get install nodejs npm)");
        }
        return (script, null);
    }

    /// <summary>A validator report: counts and messages.</summary>
    public sealed class Report
    {
        public Report(string json)
        {
            Json = json;
            using var doc = JsonDocument.Parse(json);
            var issues = doc.RootElement.GetProperty("issues");
            Errors = issues.GetProperty("numErrors").GetInt32();
            Warnings = issues.GetProperty("numWarnings").GetInt32();
            Messages = issues.GetProperty("messages").EnumerateArray()
                .Select(m => (m.GetProperty("code").GetString()!, m.GetProperty("severity").GetInt32(), m.GetProperty("message").GetString()!))
                .ToList();
        }

        public string Json { get; }
        public int Errors { get; }
        public int Warnings { get; }

        /// <summary>(code, severity 0 error / 1 warning / 2 info / 3 hint, message).</summary>
        public IReadOnlyList<(string Code, int Severity, string Message)> Messages { get; }

        public override string ToString() => $"{Errors} errors, {Warnings} warnings: " +
            string.Join("; ", Messages.Take(20).Select(m => $"[{m.Severity}] {m.Code}: {m.Message}"));
    }
}
