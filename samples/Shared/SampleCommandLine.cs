using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Spectre.Console;

namespace MdtDist.Samples;

/// <summary>
/// The command-line convention of the samples (linked into each one): System.CommandLine parses and validates (an unknown
/// option or a bad value is its message naming the option and the value, exit code 1, never a stack trace), every text
/// goes to one writer (the console, or a test's <see cref="StringWriter"/>), and Spectre.Console draws the progress bars
/// (on an interactive terminal) and the summary tables.
/// </summary>
internal static class SampleCommandLine
{
    /// <summary>Parses <paramref name="args"/> and runs the chosen action with help and errors written to <paramref name="log"/>.</summary>
    public static int Invoke(RootCommand root, string[] args, TextWriter log) =>
        root.Parse(args).Invoke(new InvocationConfiguration { Output = log, Error = log });

    /// <summary>Prints the help of <paramref name="root"/> (what to download, every option) to <paramref name="log"/>.</summary>
    public static void PrintHelp(RootCommand root, TextWriter log) => Invoke(root, new[] { "--help" }, log);

    /// <summary>An optional positional argument that does not swallow an unknown option such as <c>--bogus</c>.</summary>
    public static Argument<string?> OptionalPath(string name, string description)
    {
        var a = new Argument<string?>(name) { Description = description, Arity = ArgumentArity.ZeroOrOne };
        a.Validators.Add(r =>
        {
            foreach (var t in r.Tokens)
                if (t.Value.StartsWith('-')) r.AddError($"unknown option '{t.Value}'.");
        });
        return a;
    }

    /// <summary>An integer option that rejects values below <paramref name="min"/> (null when not given).</summary>
    public static Option<int?> Int(string name, string description, int min) => new(name)
    {
        Description = description,
        CustomParser = r => ParseInt(r, min),
    };

    /// <summary>An integer option that rejects values below <paramref name="min"/>, with a default.</summary>
    public static Option<int> Int(string name, string description, int min, int defaultValue) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r => ParseInt(r, min) ?? defaultValue,
    };

    /// <summary>A number option (null when not given) whose value must satisfy <paramref name="valid"/>, described by <paramref name="rule"/>.</summary>
    public static Option<double?> Number(string name, string description, Func<double, bool>? valid = null, string rule = "a number") => new(name)
    {
        Description = description,
        CustomParser = r => ParseNumber(r, valid, rule),
    };

    private static int? ParseInt(ArgumentResult r, int min)
    {
        var s = r.Tokens[^1].Value;
        if (int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= min) return v;
        r.AddError($"{OptionName(r)} needs an integer >= {min}, got '{s}'.");
        return null;
    }

    private static double? ParseNumber(ArgumentResult r, Func<double, bool>? valid, string rule)
    {
        var s = r.Tokens[^1].Value;
        if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) && (valid?.Invoke(v) ?? true)) return v;
        r.AddError($"{OptionName(r)} needs {rule}, got '{s}'.");
        return null;
    }

    private static string OptionName(ArgumentResult r) => r.Parent is OptionResult o ? o.Option.Name : r.Argument.Name;

    /// <summary>
    /// The Spectre console that writes to <paramref name="log"/>: the terminal itself for <see cref="Console.Out"/>,
    /// otherwise a plain, non-interactive, 200-column console (no colours, no live bars) over the writer.
    /// </summary>
    public static IAnsiConsole ConsoleFor(TextWriter log)
    {
        if (ReferenceEquals(log, Console.Out)) return AnsiConsole.Console;
        var c = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(log), Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Interactive = InteractionSupport.No,
        });
        c.Profile.Width = 200;
        return c;
    }

    /// <summary>Whether live progress bars can be drawn (an interactive terminal whose output is not redirected).</summary>
    public static bool CanDrawBars(IAnsiConsole console) => console.Profile.Capabilities.Interactive && !Console.IsOutputRedirected;

    /// <summary>Spectre's progress display with the samples' columns.</summary>
    public static Progress Bars(IAnsiConsole console) =>
        console.Progress().AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn());

    /// <summary>A table with the given column headers and rounded borders.</summary>
    public static Table Table(params string[] headers)
    {
        var t = new Table().Border(TableBorder.Rounded);
        foreach (var h in headers) t.AddColumn(Markup.Escape(h));
        return t;
    }
}

/// <summary>Reports synchronously on the calling thread (<see cref="Progress{T}"/> would post to the thread pool).</summary>
internal sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    /// <inheritdoc />
    public void Report(T value) => report(value);
}
