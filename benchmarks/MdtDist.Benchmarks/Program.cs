using BenchmarkDotNet.Running;

// Benchmarks run in-process: BenchmarkDotNet's generated child project would not carry TorchSharp-cpu's native
// runtime assets (nor the build step that makes libLibTorchSharp.so load on older distributions).
if (args.Length > 0 && args[0] == "stage2-profile")
{
    MdtDist.Benchmarks.Stage2Profile.Run(args[1..]);
    return;
}
if (args.Length > 0 && args[0] == "trunk-profile")
{
    MdtDist.Benchmarks.TrunkProfile.Run(args[1..]);
    return;
}
if (args.Length > 0 && args[0] == "mesh-profile")
{
    MdtDist.Benchmarks.MeshDecoderProfile.Run(args[1..]);
    return;
}
var arguments = args.Contains("--inProcess", StringComparer.OrdinalIgnoreCase) ? args : args.Append("--inProcess").ToArray();
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(arguments);

/// <summary>Entry point type for BenchmarkSwitcher.</summary>
public partial class Program { }
