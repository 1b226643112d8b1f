using BenchmarkDotNet.Running;

// Benchmarks run in-process: BenchmarkDotNet's generated child project would not carry TorchSharp-cpu's native
// runtime assets (nor the build step that makes libLibTorchSharp.so load on older distributions).
// The profiles (piece-by-piece timings of full-size TRELLIS parts, docs/trellis-cpu*.md) are commands of their own.
var profiles = new Dictionary<string, Action<string[]>>(StringComparer.Ordinal)
{
    ["stage2-profile"] = MdtDist.Benchmarks.Stage2Profile.Run,
    ["flow-block-profile"] = MdtDist.Benchmarks.FlowBlockProfile.Run,
    ["sdpa-variants"] = MdtDist.Benchmarks.SdpaVariants.Run,
    ["flow-speed"] = MdtDist.Benchmarks.FlowSpeed.Run,
    ["trunk-profile"] = MdtDist.Benchmarks.TrunkProfile.Run,
    ["mesh-profile"] = MdtDist.Benchmarks.MeshDecoderProfile.Run,
};
if (args.Length > 0 && profiles.TryGetValue(args[0], out var profile))
{
    profile(args[1..]);
    return;
}
var arguments = args.Contains("--inProcess", StringComparer.OrdinalIgnoreCase) ? args : args.Append("--inProcess").ToArray();
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(arguments);

/// <summary>Entry point type for BenchmarkSwitcher.</summary>
public partial class Program { }
