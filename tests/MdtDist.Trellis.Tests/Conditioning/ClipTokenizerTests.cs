using System.Text.Json;
using MdtDist.Trellis.Conditioning;
using Xunit;

namespace MdtDist.Trellis.Tests.Conditioning;

public class ClipTokenizerTests
{
    private static readonly string Folder = Path.Combine(AppContext.BaseDirectory, "TestData", "clip_tokenizer");
    private static readonly Lazy<ClipTokenizer> Shared = new(() => ClipTokenizer.FromFolder(Folder));

    public static IEnumerable<object[]> Cases()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "cases.json")));
        int i = 0;
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
            yield return new object[] { i++, c.GetProperty("text").GetString()!, c.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt64()).ToArray() };
    }

    /// <summary>Every prompt of the fixture (OpenAI's own tokenizer) gives exactly the same 77 ids.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesOpenAITokenizer(int index, string text, long[] expected)
    {
        var ids = Shared.Value.Encode(text);
        Assert.True(expected.SequenceEqual(ids), $"case {index} '{text}': got [{string.Join(", ", ids)}]");
    }

    [Fact]
    public void SpecialIdsAndLayout()
    {
        var tok = Shared.Value;
        Assert.Equal(49406, tok.StartId);
        Assert.Equal(49407, tok.EndId);
        Assert.Equal(77, tok.ContextLength);
        var empty = tok.Encode("");
        Assert.Equal(49406, empty[0]);
        Assert.All(empty.Skip(1), id => Assert.Equal(49407, id));
    }

    /// <summary>Longer prompts keep the first 75 tokens and end with the end token, as CLIP truncates.</summary>
    [Fact]
    public void TruncatesTo75TokensPlusSpecials()
    {
        var tok = Shared.Value;
        var text = string.Join(" ", Enumerable.Range(0, 120).Select(i => i % 2 == 0 ? "chair" : "table"));
        var all = tok.Tokenize(text);
        Assert.Equal(120, all.Count);
        var ids = tok.Encode(text);
        Assert.Equal(77, ids.Length);
        Assert.Equal(all.Take(75).Select(x => (long)x), ids.Skip(1).Take(75));
        Assert.Equal(49407, ids[76]);
    }

    [Fact]
    public void BatchIsStackOfSingles()
    {
        var tok = Shared.Value;
        using var batch = tok.EncodeBatch(new[] { "a chair", "", "a red car" });
        Assert.Equal(new long[] { 3, 77 }, batch.shape);
        Assert.Equal(tok.Encode("a red car"), batch[2].data<long>().ToArray());
    }

    /// <summary>
    /// Non-ASCII text: NFC normalisation (composed and decomposed accents tokenise alike), lower-casing of any script,
    /// UTF-8 bytes through CLIP's byte alphabet (no unknown symbols), and no HTML unescaping (as transformers' tokenizer,
    /// unlike OpenAI's ftfy + html.unescape).
    /// </summary>
    [Fact]
    public void NonAsciiIsNormalisedAsTransformersDoes()
    {
        var tok = Shared.Value;
        Assert.Equal(tok.Encode("caf\u00e9"), tok.Encode("cafe\u0301"));
        Assert.Equal(tok.Encode("CAFÉ"), tok.Encode("café"));
        Assert.Equal(tok.Encode("ÄPFEL"), tok.Encode("äpfel"));
        var cjk = tok.Tokenize("椅子");
        Assert.NotEmpty(cjk);
        Assert.DoesNotContain(tok.EndId, cjk);
        var emoji = tok.Tokenize("🪑");
        Assert.NotEmpty(emoji);
        Assert.DoesNotContain(tok.EndId, emoji);
        Assert.NotEqual(tok.Encode("a &amp; b"), tok.Encode("a & b"));
    }

    [Fact]
    public void MissingFilesNameTheFile()
    {
        var dir = Directory.CreateTempSubdirectory("mdtdist-clip-").FullName;
        try
        {
            var e = Assert.Throws<FileNotFoundException>(() => ClipTokenizer.FromFolder(dir));
            Assert.Contains("vocab.json", e.Message);
            File.Copy(Path.Combine(Folder, "vocab.json"), Path.Combine(dir, "vocab.json"));
            e = Assert.Throws<FileNotFoundException>(() => ClipTokenizer.FromFolder(dir));
            Assert.Contains("merges.txt", e.Message);
            File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\ni n\nbad line here\n");
            var bad = Assert.Throws<InvalidDataException>(() => ClipTokenizer.FromFolder(dir));
            Assert.Contains("line 3", bad.Message);
            File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\ni n\n");
            File.WriteAllText(Path.Combine(dir, "vocab.json"), "{\"a</w>\": 0}");
            bad = Assert.Throws<InvalidDataException>(() => ClipTokenizer.FromFolder(dir));
            Assert.Contains("<|startoftext|>", bad.Message);
            File.WriteAllText(Path.Combine(dir, "vocab.json"), "[1, 2]");
            bad = Assert.Throws<InvalidDataException>(() => ClipTokenizer.FromFolder(dir));
            Assert.Contains("vocab.json", bad.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
