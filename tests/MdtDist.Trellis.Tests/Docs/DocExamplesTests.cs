using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Xunit;

namespace MdtDist.Trellis.Tests.Docs;

/// <summary>
/// The C# examples of README.md and docs/*.md compile against the built MdtDist.Core and MdtDist.Trellis. A code block
/// fenced as <c>```csharp</c> whose first line is <c>// example</c> (or <c>// example: what it shows</c>) is a complete
/// program: top-level statements with the SDK's implicit usings, every name it uses declared in the block. Other
/// blocks are fragments and are not compiled. A compile error fails with the file and the line in that file.
/// </summary>
public class DocExamplesTests
{
    /// <summary>The marker of a complete example.</summary>
    internal const string Marker = "// example";

    /// <summary>One marked block: the file, the line of its first code line (1-based) and its code.</summary>
    internal sealed record Example(string File, int FirstLine, string Code)
    {
        public override string ToString() => $"{File}:{FirstLine}";
    }

    /// <summary>The repository root: the folder above this test project's output that holds README.md and docs/.</summary>
    internal static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "README.md")) && Directory.Exists(Path.Combine(d.FullName, "docs")) && File.Exists(Path.Combine(d.FullName, "MdtDist.sln")))
                return d.FullName;
        throw new DirectoryNotFoundException($"no folder above '{AppContext.BaseDirectory}' holds README.md, docs/ and MdtDist.sln.");
    }

    /// <summary>Every marked ```csharp block of <paramref name="markdown"/> (named <paramref name="file"/> in messages).</summary>
    internal static IEnumerable<Example> Extract(string file, string markdown)
    {
        var lines = markdown.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Trim() != "```csharp") continue;
            int start = i + 1, end = start;
            while (end < lines.Length && lines[end].Trim() != "```") end++;
            if (end == lines.Length) throw new InvalidDataException($"{file}:{i + 1}: a ```csharp block is never closed.");
            if (start < end && lines[start].TrimStart().StartsWith(Marker, StringComparison.Ordinal))
                yield return new Example(file, start + 1, string.Join("\n", lines[start..end]));
            i = end;
        }
    }

    /// <summary>Compiles one example; returns its errors as <c>file:line: message</c>.</summary>
    internal static IReadOnlyList<string> Compile(Example e)
    {
        // The SDK's implicit usings of a console app (ImplicitUsings=enable), as a user's project has them.
        const string globals = "global using System; global using System.IO; global using System.Linq; global using System.Collections.Generic; " +
                               "global using System.Threading; global using System.Threading.Tasks; global using System.Net.Http;";
        var options = new CSharpParseOptions(LanguageVersion.Latest);
        var trees = new[]
        {
            CSharpSyntaxTree.ParseText(globals, options, path: "implicit-usings.cs"),
            CSharpSyntaxTree.ParseText(e.Code, options, path: e.File, encoding: Encoding.UTF8),
        };
        var compilation = CSharpCompilation.Create("DocExample", trees, References.Value,
            new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable));
        using var pe = new MemoryStream();
        var result = compilation.Emit(pe);
        return result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)
            .Select(d =>
            {
                var span = d.Location.GetLineSpan();
                int line = span.Path == e.File ? e.FirstLine + span.StartLinePosition.Line : 0;
                return $"{e.File}:{line}: {d.Id} {d.GetMessage(System.Globalization.CultureInfo.InvariantCulture)}";
            })
            .ToList();
    }

    /// <summary>The framework and every assembly this test runs with (MdtDist.Core, MdtDist.Trellis, TorchSharp, ...).</summary>
    private static readonly Lazy<IReadOnlyList<MetadataReference>> References = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Where(p => p.EndsWith(".dll", StringComparison.Ordinal) && !p.Contains("Microsoft.CodeAnalysis", StringComparison.Ordinal))
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p))
            .ToList());

    public static TheoryData<string> Files()
    {
        var root = RepositoryRoot();
        var data = new TheoryData<string>();
        data.Add("README.md");
        foreach (var f in Directory.GetFiles(Path.Combine(root, "docs"), "*.md").Order(StringComparer.Ordinal))
            data.Add(Path.GetRelativePath(root, f).Replace('\\', '/'));
        return data;
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void MarkedExamplesCompile(string file)
    {
        var examples = Extract(file, File.ReadAllText(Path.Combine(RepositoryRoot(), file))).ToList();
        var errors = examples.SelectMany(Compile).ToList();
        Assert.True(errors.Count == 0, $"{errors.Count} compile error(s) in the examples of {file}:\n" + string.Join("\n", errors));
    }

    [Fact]
    public void EveryCSharpBlockOfTheReadmeIsACompiledExample()
    {
        var text = File.ReadAllText(Path.Combine(RepositoryRoot(), "README.md"));
        int blocks = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n').Count(l => l.Trim() == "```csharp");
        Assert.True(blocks > 0);
        Assert.Equal(blocks, Extract("README.md", text).Count());
    }

    [Fact]
    public void ACompileErrorNamesTheFileAndTheLineInIt()
    {
        // The harness itself: a block with an undefined name on its third code line (line 5 of the file) is reported there.
        const string md = "# t\n\n```csharp\n// example\nvar x = 1;\nvar y = undefinedName + x;\n```\n\n```csharp\nnot compiled: a fragment\n```\n";
        var examples = Extract("t.md", md).ToList();
        var only = Assert.Single(examples);
        Assert.Equal(4, only.FirstLine);
        var errors = Compile(only);
        var error = Assert.Single(errors);
        Assert.StartsWith("t.md:6: CS0103", error);
        Assert.Contains("undefinedName", error);
        // and a valid program using the library compiles
        Assert.Empty(Compile(new Example("ok.md", 1, "// example\nusing MdtDist.Core.Sampling;\nvar grid = TimeGrid.Trellis(25, 3.0);\nConsole.WriteLine(grid.Length);")));
    }
}
