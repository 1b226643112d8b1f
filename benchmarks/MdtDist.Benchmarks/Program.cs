using BenchmarkDotNet.Running;

// Benchmarks run in-process: BenchmarkDotNet's generated child project would not carry TorchSharp-cpu's native
// runtime assets (nor the build step that makes libLibTorchSharp.so load on older distributions).
var arguments = args.Contains("--inProcess", StringComparer.OrdinalIgnoreCase) ? args : args.Append("--inProcess").ToArray();
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(arguments);

/// <summary>Entry point type for BenchmarkSwitcher.</summary>
public partial class Program { }
