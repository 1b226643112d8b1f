using System.Security.Cryptography;
using System.Text.Json;
using MdtDist.Core.Training;
using Xunit;

namespace MdtDist.Core.Tests.Training;

/// <summary>The checkpoint finder only returns complete checkpoints: it skips newer step-N folders a crash or a
/// truncation left incomplete, instead of resuming from them.</summary>
public sealed class CheckpointStoreTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mdtdist-ckptstore-");

    public void Dispose() => _dir.Delete(recursive: true);

    /// <summary>Writes step-N with one data file and a manifest listing it (or a manifest edited by <paramref name="edit"/>).</summary>
    private string Plant(long step, bool manifest = true, Action<string>? damage = null, Func<object, object>? edit = null)
    {
        var folder = Path.Combine(_dir.FullName, "step-" + step.ToString("D9"));
        Directory.CreateDirectory(folder);
        var data = Enumerable.Range(0, 100).Select(i => (byte)(i * step)).ToArray();
        File.WriteAllBytes(Path.Combine(folder, "student.safetensors"), data);
        var trainer = System.Text.Encoding.UTF8.GetBytes("{\"Step\": " + step + "}");
        File.WriteAllBytes(Path.Combine(folder, CheckpointFiles.Trainer), trainer);
        object m = new
        {
            Step = step,
            Files = new[]
            {
                new { Name = "student.safetensors", Bytes = (long)data.Length, Sha256 = Convert.ToHexString(SHA256.HashData(data)) },
                new { Name = CheckpointFiles.Trainer, Bytes = (long)trainer.Length, Sha256 = Convert.ToHexString(SHA256.HashData(trainer)) },
            },
        };
        if (edit is not null) m = edit(m);
        if (manifest) File.WriteAllText(Path.Combine(folder, CheckpointFiles.Manifest), JsonSerializer.Serialize(m));
        damage?.Invoke(folder);
        return folder;
    }

    [Fact]
    public void FindLatestSkipsIncompleteNewerFolders()
    {
        var good = Plant(3);
        Assert.Equal(good, CheckpointStore.FindLatest(_dir.FullName));
        Plant(5, damage: f => File.WriteAllBytes(Path.Combine(f, "student.safetensors"), new byte[40]));   // truncated
        Plant(7, manifest: false);                                                                         // crash before the manifest
        Plant(9, damage: f => File.Delete(Path.Combine(f, "student.safetensors")));                        // file missing
        Plant(11, edit: _ => new { Step = 11L, Files = Array.Empty<object>() });                           // empty manifest
        Plant(13, damage: f => File.WriteAllText(Path.Combine(f, CheckpointFiles.Manifest), "{ not json"));  // unreadable manifest
        Assert.Equal(good, CheckpointStore.FindLatest(_dir.FullName));
        Assert.Equal(new[] { good }, CheckpointStore.List(_dir.FullName));
        CheckpointStore.Verify(good);
        foreach (var step in new[] { 5, 7, 9, 11, 13 })
            Assert.Throws<InvalidDataException>(() => CheckpointStore.Verify(Path.Combine(_dir.FullName, "step-" + step.ToString("D9"))));
        // A complete newer checkpoint is found again.
        var newer = Plant(15);
        Assert.Equal(newer, CheckpointStore.FindLatest(_dir.FullName));
    }

    [Fact]
    public void VerifyChecksTheHashesFindLatestOnlyTheSizes()
    {
        var folder = Plant(4, damage: f =>
        {
            var p = Path.Combine(f, "student.safetensors");
            var b = File.ReadAllBytes(p);
            b[10] ^= 0xFF;
            File.WriteAllBytes(p, b);
        });
        Assert.Contains("SHA-256", Assert.Throws<InvalidDataException>(() => CheckpointStore.Verify(folder)).Message);
    }
}
