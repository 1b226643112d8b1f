using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Conditioning;

/// <summary>
/// CLIP's byte-level BPE tokenizer as TRELLIS-text runs it (<c>AutoTokenizer</c> of openai/clip-vit-large-patch14 with
/// <c>max_length=77, padding="max_length", truncation=True</c>), read from the model folder's <c>vocab.json</c> and
/// <c>merges.txt</c>.
/// </summary>
/// <remarks>
/// <para>Text is normalised as transformers' CLIP tokenizer normalises it: Unicode NFC, every run of white space
/// replaced by one space, lower case. Words are split with CLIP's pattern (contractions <c>'s 't 're 've 'm 'll 'd</c>,
/// runs of letters, single digits, runs of other non-space characters), each word's UTF-8 bytes are mapped to CLIP's
/// byte alphabet, the last symbol gets the end-of-word mark <c>&lt;/w&gt;</c>, and merges are applied by rank.</para>
/// <para>OpenAI's own <c>simple_tokenizer</c> also runs <c>ftfy.fix_text</c> and HTML unescaping first; transformers'
/// tokenizer (what TRELLIS-text uses) does not, and neither does this class: <c>"&amp;amp;"</c> stays five characters,
/// and mojibake is not repaired. For plain text the two agree exactly.</para>
/// <para>The sequence is <c>&lt;|startoftext|&gt;</c>, at most <see cref="ContextLength"/> − 2 tokens,
/// <c>&lt;|endoftext|&gt;</c>, then <c>&lt;|endoftext|&gt;</c> padding up to <see cref="ContextLength"/>.</para>
/// </remarks>
public sealed class ClipTokenizer
{
    /// <summary>The start-of-text token.</summary>
    public const string StartOfText = "<|startoftext|>";

    /// <summary>The end-of-text token (also the padding).</summary>
    public const string EndOfText = "<|endoftext|>";

    private static readonly Regex Pattern = new(
        @"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        RegexOptions.Compiled | RegexOptions.CultureInvariant | RegexOptions.IgnoreCase);

    private static readonly Regex WhiteSpace = new(@"\s+", RegexOptions.Compiled | RegexOptions.CultureInvariant);

    private static readonly string[] ByteAlphabet = BuildByteAlphabet();

    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    /// <summary>Builds a tokenizer from an already-read vocabulary and merge list.</summary>
    /// <param name="vocab">Token → id (must contain <see cref="StartOfText"/> and <see cref="EndOfText"/>).</param>
    /// <param name="merges">Merge pairs in rank order.</param>
    /// <param name="contextLength">Sequence length (77 for CLIP).</param>
    /// <exception cref="ArgumentException">The vocabulary lacks a special token, or <paramref name="contextLength"/> &lt; 2.</exception>
    public ClipTokenizer(IReadOnlyDictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, int contextLength = 77)
    {
        ArgumentNullException.ThrowIfNull(vocab);
        ArgumentNullException.ThrowIfNull(merges);
        if (contextLength < 2) throw new ArgumentException($"contextLength must be >= 2, got {contextLength}.", nameof(contextLength));
        _vocab = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        if (!_vocab.TryGetValue(StartOfText, out var bos)) throw new ArgumentException($"the vocabulary has no '{StartOfText}' token.", nameof(vocab));
        if (!_vocab.TryGetValue(EndOfText, out var eos)) throw new ArgumentException($"the vocabulary has no '{EndOfText}' token.", nameof(vocab));
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (int i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        StartId = bos;
        EndId = eos;
        ContextLength = contextLength;
        VocabularySize = _vocab.Count;
    }

    /// <summary>The id of <see cref="StartOfText"/> (49406 for CLIP).</summary>
    public int StartId { get; }

    /// <summary>The id of <see cref="EndOfText"/> (49407 for CLIP), also used for padding.</summary>
    public int EndId { get; }

    /// <summary>The fixed sequence length of <see cref="Encode"/> (77).</summary>
    public int ContextLength { get; }

    /// <summary>Number of entries of the vocabulary.</summary>
    public int VocabularySize { get; }

    /// <summary>Reads <c>vocab.json</c> and <c>merges.txt</c> from <paramref name="folder"/> (transformers' layout; a
    /// <c>tokenizer/</c> sub-folder is used when the files are there instead).</summary>
    /// <exception cref="FileNotFoundException">A file is missing; the message names it.</exception>
    /// <exception cref="InvalidDataException">A file is malformed; the message names the file and line or key.</exception>
    public static ClipTokenizer FromFolder(string folder, int contextLength = 77)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var dir = folder;
        if (!File.Exists(Path.Combine(dir, "vocab.json")) && File.Exists(Path.Combine(dir, "tokenizer", "vocab.json")))
            dir = Path.Combine(dir, "tokenizer");
        return FromFiles(Path.Combine(dir, "vocab.json"), Path.Combine(dir, "merges.txt"), contextLength);
    }

    /// <summary>Reads a vocabulary (<c>vocab.json</c>: token → id) and a merge list (<c>merges.txt</c>).</summary>
    /// <exception cref="FileNotFoundException">A file is missing; the message names it.</exception>
    /// <exception cref="InvalidDataException">A file is malformed; the message names the file and line or key.</exception>
    public static ClipTokenizer FromFiles(string vocabPath, string mergesPath, int contextLength = 77)
    {
        if (!File.Exists(vocabPath))
            throw new FileNotFoundException($"CLIP tokenizer: the vocabulary '{vocabPath}' does not exist (expected vocab.json from the text model's folder, e.g. openai/clip-vit-large-patch14).", vocabPath);
        if (!File.Exists(mergesPath))
            throw new FileNotFoundException($"CLIP tokenizer: the merge list '{mergesPath}' does not exist (expected merges.txt from the text model's folder, e.g. openai/clip-vit-large-patch14).", mergesPath);
        var vocab = ReadVocab(vocabPath);
        var merges = ReadMerges(mergesPath);
        try
        {
            return new ClipTokenizer(vocab, merges, contextLength);
        }
        catch (ArgumentException e) when (e.ParamName == "vocab")
        {
            throw new InvalidDataException($"CLIP tokenizer: '{vocabPath}': {e.Message}", e);
        }
    }

    private static Dictionary<string, int> ReadVocab(string path)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"CLIP tokenizer: '{path}' must hold a JSON object (token → id), found {doc.RootElement.ValueKind}.");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                    throw new InvalidDataException($"CLIP tokenizer: '{path}': token '{p.Name}' must map to a non-negative integer id, found {p.Value.GetRawText()}.");
                if (!vocab.TryAdd(p.Name, id))
                    throw new InvalidDataException($"CLIP tokenizer: '{path}': token '{p.Name}' appears twice.");
            }
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"CLIP tokenizer: '{path}' is not valid JSON: {e.Message}", e);
        }
        return vocab;
    }

    private static List<(string, string)> ReadMerges(string path)
    {
        var merges = new List<(string, string)>();
        int lineNo = 0;
        foreach (var raw in File.ReadLines(path, Encoding.UTF8))
        {
            lineNo++;
            if (lineNo == 1 && raw.StartsWith("#version", StringComparison.Ordinal)) continue;
            if (raw.Length == 0) continue;
            var parts = raw.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new InvalidDataException($"CLIP tokenizer: '{path}' line {lineNo}: expected two symbols separated by one space, found '{raw}'.");
            merges.Add((parts[0], parts[1]));
        }
        return merges;
    }

    /// <summary>Normalises text as CLIP's tokenizer does before splitting: NFC, white-space runs → one space, trimmed, lower case.</summary>
    public static string Normalize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var s = text.Normalize(NormalizationForm.FormC);
        s = WhiteSpace.Replace(s, " ").Trim();
        return s.ToLowerInvariant();
    }

    /// <summary>The BPE token ids of <paramref name="text"/>, without start/end tokens and without truncation.</summary>
    public IReadOnlyList<int> Tokenize(string text)
    {
        var ids = new List<int>();
        foreach (Match m in Pattern.Matches(Normalize(text)))
        {
            var word = m.Value;
            if (word == StartOfText) { ids.Add(StartId); continue; }
            if (word == EndOfText) { ids.Add(EndId); continue; }
            ids.AddRange(Bpe(word));
        }
        return ids;
    }

    /// <summary>
    /// The <see cref="ContextLength"/> input ids TRELLIS-text feeds its text model: start token, the first
    /// <see cref="ContextLength"/> − 2 BPE tokens, end token, end-token padding.
    /// </summary>
    public long[] Encode(string text)
    {
        var tokens = Tokenize(text);
        var ids = new long[ContextLength];
        ids[0] = StartId;
        int n = Math.Min(tokens.Count, ContextLength - 2);
        for (int i = 0; i < n; i++) ids[i + 1] = tokens[i];
        for (int i = n + 1; i < ContextLength; i++) ids[i] = EndId;
        return ids;
    }

    /// <summary>Encodes several prompts to an int64 tensor <c>[B, ContextLength]</c> on the CPU.</summary>
    /// <exception cref="ArgumentException">No prompt.</exception>
    public Tensor EncodeBatch(IReadOnlyList<string> texts)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (texts.Count == 0) throw new ArgumentException("at least one prompt is needed.", nameof(texts));
        var flat = new long[texts.Count * ContextLength];
        for (int b = 0; b < texts.Count; b++)
            Encode(texts[b] ?? throw new ArgumentException($"prompt {b} is null.", nameof(texts))).CopyTo(flat, b * ContextLength);
        return torch.tensor(flat, new long[] { texts.Count, ContextLength }, dtype: ScalarType.Int64);
    }

    private int[] Bpe(string word)
    {
        lock (_cache)
            if (_cache.TryGetValue(word, out var cached)) return cached;
        var bytes = Encoding.UTF8.GetBytes(word);
        var symbols = new List<string>(bytes.Length);
        foreach (var b in bytes) symbols.Add(ByteAlphabet[b]);
        symbols[^1] += "</w>";
        while (symbols.Count > 1)
        {
            int best = int.MaxValue;
            (string, string) bestPair = default;
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (_ranks.TryGetValue((symbols[i], symbols[i + 1]), out var r) && r < best) { best = r; bestPair = (symbols[i], symbols[i + 1]); }
            if (best == int.MaxValue) break;
            var merged = new List<string>(symbols.Count);
            for (int i = 0; i < symbols.Count; i++)
            {
                if (i + 1 < symbols.Count && symbols[i] == bestPair.Item1 && symbols[i + 1] == bestPair.Item2)
                {
                    merged.Add(bestPair.Item1 + bestPair.Item2);
                    i++;
                }
                else merged.Add(symbols[i]);
            }
            symbols = merged;
        }
        var ids = new int[symbols.Count];
        for (int i = 0; i < symbols.Count; i++)
        {
            if (!_vocab.TryGetValue(symbols[i], out ids[i]))
                ids[i] = EndId; // transformers' CLIP tokenizer maps unknown symbols to its unk token, <|endoftext|>
        }
        lock (_cache) _cache.TryAdd(word, ids);
        return ids;
    }

    /// <summary>CLIP's reversible byte → printable-character map (GPT-2's): printable Latin-1 bytes map to
    /// themselves, the rest to code points from 256 up, in byte order.</summary>
    private static string[] BuildByteAlphabet()
    {
        var map = new string[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? ((char)b).ToString(CultureInfo.InvariantCulture) : ((char)(256 + next++)).ToString(CultureInfo.InvariantCulture);
        }
        return map;
    }
}
