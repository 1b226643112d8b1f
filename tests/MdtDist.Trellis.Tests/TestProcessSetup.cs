using System.Runtime.CompilerServices;
using MdtDist.TestSupport;

namespace MdtDist.Trellis.Tests;

internal static class TestProcessSetup
{
    /// <summary>Every scratch file of this test process goes to one folder that is deleted at exit.</summary>
#pragma warning disable CA2255 // a test assembly, not a library: the initializer is the point
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Initialize() => TestTempRoot.Install();
}
