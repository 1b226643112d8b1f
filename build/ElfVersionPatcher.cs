// MdtDist build helper: marks one symbol-version requirement of an ELF shared object as weak.
//
// TorchSharp 0.107's libLibTorchSharp.so was linked against GCC 13's libstdc++ and declares a need for
// GLIBCXX_3.4.32 (for std::ios_base_library_init, which has no relocation). Older distributions
// (Debian 12: libstdc++ up to GLIBCXX_3.4.30) refuse to load it. Setting VER_FLG_WEAK on that one
// Vernaux entry lets the dynamic loader accept the library. This file is compiled both into the MSBuild
// inline task (MdtDist.TorchSharpGlibcxx.targets) and, as internal code, into MdtDist.Core (with ELFPATCH_NO_MSBUILD),
// whose run-time fix (MdtDist.Core.TorchSharpRuntime) applies the same patch to a private copy.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;

namespace MdtDist.Build
{
    /// <summary>Outcome of <see cref="ElfVersionPatcher.MarkVersionNeedWeak"/>.</summary>
    internal enum ElfPatchResult
    {
        /// <summary>The requirement was strong and is now weak.</summary>
        Patched,
        /// <summary>The requirement was already weak; the file was not touched.</summary>
        AlreadyWeak,
        /// <summary>The file does not require that version at all; the file was not touched.</summary>
        VersionNotRequired,
    }

    /// <summary>Reads and edits the GNU symbol-versioning sections of 64-bit little-endian ELF files.</summary>
    internal static class ElfVersionPatcher
    {
        /// <summary>VER_FLG_WEAK from elf.h.</summary>
        public const ushort VerFlagWeak = 0x2;
        private const uint ShtGnuVerdef = 0x6ffffffd;
        private const uint ShtGnuVerneed = 0x6ffffffe;

        private readonly struct Section
        {
            public Section(uint type, long offset, long size, uint link, uint info)
            { Type = type; Offset = offset; Size = size; Link = link; Info = info; }
            public uint Type { get; }
            public long Offset { get; }
            public long Size { get; }
            public uint Link { get; }
            public uint Info { get; }
        }

        /// <summary>One required version (a Vernaux entry) of one needed library (its Verneed entry).</summary>
        public readonly struct VersionNeed
        {
            /// <summary>Creates a record.</summary>
            public VersionNeed(string file, string version, ushort flags, long flagsOffset)
            { File = file; Version = version; Flags = flags; FlagsOffset = flagsOffset; }
            /// <summary>The needed library (vn_file), e.g. libstdc++.so.6.</summary>
            public string File { get; }
            /// <summary>The version name (vna_name), e.g. GLIBCXX_3.4.32.</summary>
            public string Version { get; }
            /// <summary>vna_flags.</summary>
            public ushort Flags { get; }
            /// <summary>File offset of vna_flags.</summary>
            public long FlagsOffset { get; }
            /// <summary>True when VER_FLG_WEAK is set.</summary>
            public bool IsWeak => (Flags & VerFlagWeak) != 0;
        }

        private static InvalidDataException Bad(string path, string what) =>
            new InvalidDataException($"ELF file '{path}' does not look as expected: {what}.");

        private static Section[] ReadSections(byte[] b, string path)
        {
            if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
                throw Bad(path, "no ELF magic");
            if (b[4] != 2) throw Bad(path, $"EI_CLASS is {b[4]}, expected 2 (64-bit)");
            if (b[5] != 1) throw Bad(path, $"EI_DATA is {b[5]}, expected 1 (little-endian)");
            long shoff = (long)U64(b, 0x28, path);
            int shentsize = U16(b, 0x3A, path);
            int shnum = U16(b, 0x3C, path);
            if (shoff == 0 || shnum == 0) throw Bad(path, "no section header table");
            if (shentsize != 64) throw Bad(path, $"e_shentsize is {shentsize}, expected 64");
            if (shoff < 0 || shoff + (long)shnum * 64 > b.Length) throw Bad(path, "section header table outside the file");
            var s = new Section[shnum];
            for (int i = 0; i < shnum; i++)
            {
                long o = shoff + i * 64L;
                uint type = U32(b, o + 4, path);
                long offset = (long)U64(b, o + 24, path);
                long size = (long)U64(b, o + 32, path);
                uint link = U32(b, o + 40, path);
                uint info = U32(b, o + 44, path);
                // SHT_NOBITS (8) occupies no file space.
                if (type != 8 && type != 0 && (offset < 0 || size < 0 || offset + size > b.Length))
                    throw Bad(path, $"section {i} (type 0x{type:x}) lies outside the file");
                s[i] = new Section(type, offset, size, link, info);
            }
            return s;
        }

        private static ushort U16(byte[] b, long o, string p)
        { if (o < 0 || o + 2 > b.Length) throw Bad(p, $"read past the end at {o}"); return (ushort)(b[o] | b[o + 1] << 8); }
        private static uint U32(byte[] b, long o, string p)
        { if (o < 0 || o + 4 > b.Length) throw Bad(p, $"read past the end at {o}"); return (uint)(b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24); }
        private static ulong U64(byte[] b, long o, string p) => U32(b, o, p) | (ulong)U32(b, o + 4, p) << 32;

        private static string Str(byte[] b, Section strtab, uint index, string path)
        {
            long start = strtab.Offset + index;
            if (index >= strtab.Size) throw Bad(path, $"string index {index} outside the string table");
            long end = start;
            long limit = strtab.Offset + strtab.Size;
            while (end < limit && b[end] != 0) end++;
            if (end >= limit) throw Bad(path, "unterminated string in the string table");
            return Encoding.ASCII.GetString(b, (int)start, (int)(end - start));
        }

        private static Section StrTabOf(Section[] secs, Section s, string path)
        {
            if (s.Link >= secs.Length) throw Bad(path, $"sh_link {s.Link} names no section");
            return secs[s.Link];
        }

        /// <summary>Lists every required symbol version (every Vernaux of every Verneed) of an ELF image.</summary>
        public static IReadOnlyList<VersionNeed> ReadVersionNeeds(byte[] image, string path = "<memory>")
        {
            var secs = ReadSections(image, path);
            var result = new List<VersionNeed>();
            foreach (var s in secs)
            {
                if (s.Type != ShtGnuVerneed) continue;
                var strtab = StrTabOf(secs, s, path);
                long end = s.Offset + s.Size;
                long vn = s.Offset;
                for (uint n = 0; n < s.Info; n++)
                {
                    if (vn + 16 > end) throw Bad(path, "Verneed entry outside .gnu.version_r");
                    ushort version = U16(image, vn, path);
                    if (version != 1) throw Bad(path, $"vn_version is {version}, expected 1");
                    ushort cnt = U16(image, vn + 2, path);
                    string file = Str(image, strtab, U32(image, vn + 4, path), path);
                    uint aux = U32(image, vn + 8, path);
                    uint next = U32(image, vn + 12, path);
                    long va = vn + aux;
                    for (int a = 0; a < cnt; a++)
                    {
                        if (va < s.Offset || va + 16 > end) throw Bad(path, "Vernaux entry outside .gnu.version_r");
                        ushort flags = U16(image, va + 4, path);
                        string name = Str(image, strtab, U32(image, va + 8, path), path);
                        result.Add(new VersionNeed(file, name, flags, va + 4));
                        uint anext = U32(image, va + 12, path);
                        if (anext == 0 && a + 1 < cnt) throw Bad(path, "Vernaux chain ends early");
                        va += anext;
                    }
                    if (next == 0) { if (n + 1 < s.Info) throw Bad(path, "Verneed chain ends early"); break; }
                    vn += next;
                }
            }
            return result;
        }

        /// <summary>Lists every version an ELF shared object defines (its .gnu.version_d names).</summary>
        public static IReadOnlyList<string> ReadVersionDefinitions(byte[] image, string path = "<memory>")
        {
            var secs = ReadSections(image, path);
            var result = new List<string>();
            foreach (var s in secs)
            {
                if (s.Type != ShtGnuVerdef) continue;
                var strtab = StrTabOf(secs, s, path);
                long end = s.Offset + s.Size;
                long vd = s.Offset;
                for (uint n = 0; n < s.Info; n++)
                {
                    if (vd + 20 > end) throw Bad(path, "Verdef entry outside .gnu.version_d");
                    ushort cnt = U16(image, vd + 6, path);
                    uint aux = U32(image, vd + 12, path);
                    uint next = U32(image, vd + 16, path);
                    if (cnt > 0)
                    {
                        long va = vd + aux;
                        if (va + 8 > end) throw Bad(path, "Verdaux entry outside .gnu.version_d");
                        result.Add(Str(image, strtab, U32(image, va, path), path));
                    }
                    if (next == 0) break;
                    vd += next;
                }
            }
            return result;
        }

        /// <summary>
        /// Sets VER_FLG_WEAK on the requirement of <paramref name="version"/> from <paramref name="library"/>
        /// in the ELF file at <paramref name="path"/>. The file is rewritten through a temporary file and a
        /// rename (so a hard link into a package cache is never modified in place). Idempotent.
        /// </summary>
        /// <exception cref="InvalidDataException">The file is not a 64-bit little-endian ELF with sane version sections.</exception>
        public static ElfPatchResult MarkVersionNeedWeak(string path, string library, string version)
        {
            byte[] image = File.ReadAllBytes(path);
            var needs = ReadVersionNeeds(image, path);
            bool found = false, changed = false;
            foreach (var need in needs)
            {
                if (need.File != library || need.Version != version) continue;
                found = true;
                if (need.IsWeak) continue;
                ushort flags = (ushort)(need.Flags | VerFlagWeak);
                image[need.FlagsOffset] = (byte)(flags & 0xff);
                image[need.FlagsOffset + 1] = (byte)(flags >> 8);
                changed = true;
            }
            if (!found) return ElfPatchResult.VersionNotRequired;
            if (!changed) return ElfPatchResult.AlreadyWeak;
            string tmp = path + ".mdtdist-tmp";
            File.WriteAllBytes(tmp, image);
            // Replace rather than edit in place: a hard link into a package cache stays untouched.
            File.Delete(path);
            File.Move(tmp, path);
            return ElfPatchResult.Patched;
        }

        /// <summary>The directories searched for the system's libstdc++.so.6.</summary>
        public static readonly string[] LibStdCxxDirectories =
        {
            "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64", "/lib64", "/usr/lib", "/lib",
        };

        /// <summary>
        /// True when the first libstdc++.so.6 found in <paramref name="directories"/> defines
        /// <paramref name="version"/>; false when it does not or when none is found.
        /// </summary>
        public static bool SystemLibraryDefines(string version, IEnumerable<string>? directories = null, string soname = "libstdc++.so.6")
        {
            foreach (var dir in directories ?? LibStdCxxDirectories)
            {
                var candidate = Path.Combine(dir, soname);
                if (!File.Exists(candidate)) continue;
                byte[] image;
                try { image = File.ReadAllBytes(candidate); }
                catch (IOException) { continue; }
                catch (UnauthorizedAccessException) { continue; }
                foreach (var def in ReadVersionDefinitions(image, candidate))
                    if (def == version) return true;
                return false;
            }
            return false;
        }
    }

#if !ELFPATCH_NO_MSBUILD
    /// <summary>
    /// MSBuild task: on Linux, when the system libstdc++ lacks <see cref="Version"/>, marks that requirement weak
    /// in every file of <see cref="Files"/> (the copies of libLibTorchSharp.so in the build output).
    /// </summary>
    public class MarkGlibcxxRequirementWeak : Microsoft.Build.Utilities.Task
    {
        /// <summary>The ELF files to patch.</summary>
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();
        /// <summary>The version requirement to relax.</summary>
        public string Version { get; set; } = "GLIBCXX_3.4.32";
        /// <summary>auto (patch only where the system lacks the version), always, or never.</summary>
        public string Mode { get; set; } = "auto";

        /// <inheritdoc />
        public override bool Execute()
        {
            if (Files.Length == 0 || string.Equals(Mode, "never", StringComparison.OrdinalIgnoreCase)) return true;
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) && !string.Equals(Mode, "always", StringComparison.OrdinalIgnoreCase)) return true;
            if (string.Equals(Mode, "auto", StringComparison.OrdinalIgnoreCase) && ElfVersionPatcher.SystemLibraryDefines(Version))
            {
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, $"MdtDist: system libstdc++ defines {Version}; libLibTorchSharp.so left as is.");
                return true;
            }
            foreach (var item in Files)
            {
                try
                {
                    var r = ElfVersionPatcher.MarkVersionNeedWeak(item.ItemSpec, "libstdc++.so.6", Version);
                    Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal, $"MdtDist: {item.ItemSpec}: {Version} requirement {r}.");
                }
                catch (Exception e)
                {
                    Log.LogError($"MdtDist: cannot mark the {Version} requirement of '{item.ItemSpec}' weak: {e.Message}");
                    return false;
                }
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
