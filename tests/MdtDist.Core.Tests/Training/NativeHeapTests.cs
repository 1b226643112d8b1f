using System.Runtime.InteropServices;
using MdtDist.Core.Training;
using Xunit;

namespace MdtDist.Core.Tests.Training;

/// <summary>
/// <see cref="NativeHeap.Trim"/> hands freed heap pages back to the kernel. Measured on the freed blocks themselves with
/// <c>mincore</c> (which of their pages are resident), not on the process's resident size, which other threads of the
/// test host move at any time (a whole-process figure failed on a loaded machine with 63 of the 64 MB it asked for).
/// </summary>
public class NativeHeapTests
{
    [DllImport("libc", SetLastError = true)]
    private static extern int mincore(IntPtr addr, UIntPtr length, [Out] byte[] vec);

    private const int Page = 4096;

    /// <summary>Resident pages among the whole pages inside each block, past the first 64 bytes (where the allocator keeps
    /// its free-list links), and the number of pages looked at.</summary>
    private static (long Resident, long Pages) ResidentPages(IntPtr[] blocks, int size)
    {
        long resident = 0, pages = 0;
        var vec = new byte[size / Page + 1];
        foreach (var b in blocks)
        {
            long start = ((long)b + 64 + Page - 1) / Page * Page, end = ((long)b + size) / Page * Page;
            if (end <= start) continue;
            Assert.True(mincore((IntPtr)start, (UIntPtr)(ulong)(end - start), vec) == 0, $"mincore failed: errno {Marshal.GetLastPInvokeError()}");
            int n = (int)((end - start) / Page);
            for (int i = 0; i < n; i++) resident += vec[i] & 1;
            pages += n;
        }
        return (resident, pages);
    }

    [Fact]
    public void TrimHandsFreedHeapPagesBackToTheKernel()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.False(NativeHeap.Trim());
            return;
        }
        // 1,024 blocks of 64 KiB (below glibc's mmap threshold, so they come from the heap), each touched so that it is
        // resident and each followed by a small live block, so that the freed blocks cannot merge into the heap top and be
        // released by free itself: only malloc_trim hands their pages back.
        const int Blocks = 1024, Size = 64 * 1024;
        var blocks = new IntPtr[Blocks];
        var pins = new IntPtr[Blocks];
        for (int i = 0; i < Blocks; i++)
        {
            blocks[i] = Marshal.AllocHGlobal(Size);                      // malloc on Unix
            for (int p = 0; p < Size; p += 256) Marshal.WriteByte(blocks[i], p, 1);
            pins[i] = Marshal.AllocHGlobal(64);
        }
        try
        {
            var (touched, pages) = ResidentPages(blocks, Size);
            Assert.True(pages >= Blocks * 14L, $"{pages} whole pages inside the blocks");
            Assert.Equal(pages, touched);                                 // all resident while allocated
            foreach (var b in blocks) Marshal.FreeHGlobal(b);
            var (beforeTrim, _) = ResidentPages(blocks, Size);
            Assert.True(NativeHeap.Trim());
            var (afterTrim, _) = ResidentPages(blocks, Size);
            // free keeps the pages (that is why the trim exists); the trim returns them. Another thread may take some of
            // the freed chunks between the free and the trim and touch them again, so half is required, not all
            Assert.True(beforeTrim >= pages * 9 / 10, $"free alone released pages: {beforeTrim} of {pages} still resident");
            Assert.True(afterTrim <= pages / 2, $"{afterTrim} of {pages} pages still resident after the trim ({beforeTrim} before)");
        }
        finally
        {
            foreach (var p in pins) Marshal.FreeHGlobal(p);
        }
    }
}
