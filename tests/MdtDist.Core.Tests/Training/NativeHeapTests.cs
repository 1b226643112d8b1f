using System.Runtime.InteropServices;
using MdtDist.Core.Training;
using Xunit;

namespace MdtDist.Core.Tests.Training;

/// <summary>Runs alone: it reads the process's resident size around a trim, which other tests' allocations would move.</summary>
[CollectionDefinition(nameof(NativeHeapTests), DisableParallelization = true)]
public sealed class NativeHeapCollection;

[Collection(nameof(NativeHeapTests))]
public class NativeHeapTests
{
    [Fact]
    public void TrimHandsFreedHeapPagesBackToTheKernel()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.False(NativeHeap.Trim());
            return;
        }
        // 4,096 blocks of 64 KiB (below glibc's mmap threshold, so they come from the heap), each touched so that it is
        // resident and each followed by a small live block, so that the freed blocks cannot merge into the heap top and be
        // released by free itself: only malloc_trim hands their pages back.
        const int Blocks = 4096, Size = 64 * 1024;
        var blocks = new IntPtr[Blocks];
        var pins = new IntPtr[Blocks];
        for (int i = 0; i < Blocks; i++)
        {
            blocks[i] = Marshal.AllocHGlobal(Size);                      // malloc on Unix
            for (int p = 0; p < Size; p += 4096) Marshal.WriteByte(blocks[i], p, 1);
            pins[i] = Marshal.AllocHGlobal(64);
        }
        try
        {
            foreach (var b in blocks) Marshal.FreeHGlobal(b);
            long before = ProcessPeakMemory.ResidentBytes;
            Assert.True(NativeHeap.Trim());
            long after = ProcessPeakMemory.ResidentBytes;
            // 256 MiB were freed; require a quarter of it back: the runtime's own allocations may take freed chunks between
            // the frees and the trim (in a full test run 132 MB came back, alone 250 MB); without the trim nothing does
            Assert.True(before - after >= 64L << 20, $"resident {before / 1e6:F0} MB before the trim, {after / 1e6:F0} MB after");
        }
        finally
        {
            foreach (var p in pins) Marshal.FreeHGlobal(p);
        }
    }
}
