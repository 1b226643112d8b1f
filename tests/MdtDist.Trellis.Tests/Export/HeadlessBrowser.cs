using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace MdtDist.Trellis.Tests.Export;

/// <summary>
/// Opens a GLB in a real web viewer: Debian's headless Chromium (WebGL through SwiftShader, no GPU) loads
/// <c>tools/glb-viewer/viewer.html</c>, which reads the file with three.js's GLTFLoader (npm package <c>three</c>,
/// installed by <c>npm ci</c> there), renders one frame and posts a JSON report back. Page, scripts and the GLB are
/// served by a loopback-only HTTP server that lives for one <see cref="Open"/> call. <see cref="Missing"/> says why it
/// cannot run; with <c>MDTDIST_REQUIRE_BROWSER=1</c> (set by <c>.ci/run</c>) a missing browser fails the tests.
/// </summary>
internal static class HeadlessBrowser
{
    private static readonly Lazy<(string? Chromium, string? Root, string? Why)> Location = new(Locate);

    /// <summary>Null when the browser check can run; otherwise what is missing.</summary>
    public static string? Missing => Location.Value.Why;

    public static bool Required => Environment.GetEnvironmentVariable("MDTDIST_REQUIRE_BROWSER") == "1";

    /// <summary>What the viewer page reported (see viewer.html).</summary>
    public sealed record Report(string Status, IReadOnlyList<string> Errors, IReadOnlyList<string> Warnings, int Meshes, long Vertices, long Triangles,
        bool VertexColors, string Renderer, string Json);

    /// <summary>
    /// Serves <paramref name="glb"/> (null: the empty scene) to the viewer page, screenshots it into
    /// <paramref name="screenshotPath"/> at <paramref name="width"/>×<paramref name="height"/> and returns the page's report.
    /// </summary>
    public static Report Open(byte[]? glb, string screenshotPath, int width = 512, int height = 512)
    {
        var (chromium, root, why) = Location.Value;
        if (why is not null) throw new InvalidOperationException("headless browser missing: " + why);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(screenshotPath))!);
        if (File.Exists(screenshotPath)) File.Delete(screenshotPath);

        using var lifetime = new CancellationTokenSource(TimeSpan.FromSeconds(120));   // the server never outlives this
        using var server = new LoopbackServer(root!, glb, lifetime.Token);
        var profile = Directory.CreateTempSubdirectory("mdtdist-chromium-");
        try
        {
            var psi = new ProcessStartInfo(chromium!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[]
            {
                "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--user-data-dir=" + profile.FullName, "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--mute-audio", $"--window-size={width},{height}", "--virtual-time-budget=20000",
                "--screenshot=" + Path.GetFullPath(screenshotPath),
                server.BaseUrl + $"viewer.html?w={width}&h={height}" + (glb is null ? "" : "&glb=model.glb"),
            })
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(90_000))
            {
                p.Kill(true);
                throw new TimeoutException("chromium did not finish in 90 s");
            }
            p.WaitForExit();
            if (p.ExitCode != 0 || !File.Exists(screenshotPath))
                throw new InvalidOperationException($"chromium exited with {p.ExitCode} without a screenshot: {stdout.Result} {Tail(stderr.Result)}");
            // the page posts its report before the screenshot is taken; allow a moment for the request to be handled
            if (!server.Report.Wait(TimeSpan.FromSeconds(10)))
                throw new InvalidOperationException($"the viewer page posted no report; chromium said: {Tail(stderr.Result)}");
            return Parse(server.Report.Result);
        }
        finally
        {
            profile.Delete(true);
        }
    }

    private static string Tail(string s) => s.Length <= 2000 ? s : s[^2000..];

    private static Report Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        return new Report(
            r.GetProperty("status").GetString()!,
            r.GetProperty("errors").EnumerateArray().Select(e => e.GetString() ?? "").ToList(),
            r.GetProperty("warnings").EnumerateArray().Select(e => e.GetString() ?? "").ToList(),
            r.GetProperty("meshes").GetInt32(),
            r.GetProperty("vertices").GetInt64(),
            r.GetProperty("triangles").GetInt64(),
            r.GetProperty("vertexColors").GetBoolean(),
            r.TryGetProperty("renderer", out var rr) ? rr.GetString() ?? "" : "",
            json);
    }

    private static (string?, string?, string?) Locate()
    {
        string? dir = AppContext.BaseDirectory;
        string? root = null;
        while (dir is not null)
        {
            var candidate = Path.Combine(dir, "tools", "glb-viewer");
            if (File.Exists(Path.Combine(candidate, "viewer.html"))) { root = candidate; break; }
            dir = Path.GetDirectoryName(dir);
        }
        if (root is null) return (null, null, "tools/glb-viewer/viewer.html not found above the test folder");
        if (!File.Exists(Path.Combine(root, "node_modules", "three", "build", "three.module.js")))
            return (null, null, "the npm package three is not installed: run `npm ci` in tools/glb-viewer");
        var path = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries);
        foreach (var name in new[] { "chromium", "chromium-browser", "google-chrome" })
            foreach (var d in path)
                if (File.Exists(Path.Combine(d, name)))
                    return (Path.Combine(d, name), root, null);
        return (null, null, "no chromium on PATH (Debian: apt-get install chromium)");
    }

    /// <summary>
    /// A loopback-only HTTP server on a random free port: GET serves files below the viewer folder (no path escapes it)
    /// and <c>/model.glb</c>; POST <c>/report</c> delivers the page's report. Stops when disposed or cancelled.
    /// </summary>
    private sealed class LoopbackServer : IDisposable
    {
        private readonly HttpListener _listener = new();
        private readonly string _root;
        private readonly byte[]? _glb;
        private readonly TaskCompletionSource<string> _report = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly CancellationTokenRegistration _stop;

        public LoopbackServer(string root, byte[]? glb, CancellationToken lifetime)
        {
            _root = Path.GetFullPath(root) + Path.DirectorySeparatorChar;
            _glb = glb;
            for (int attempt = 0; ; attempt++)
            {
                int port = FreePort();
                BaseUrl = $"http://127.0.0.1:{port}/";
                _listener.Prefixes.Clear();
                _listener.Prefixes.Add(BaseUrl);
                try { _listener.Start(); break; }
                catch (HttpListenerException) when (attempt < 5) { }   // the port was taken in between: pick another
            }
            _stop = lifetime.Register(() => _listener.Close());
            _ = Task.Run(Serve);
        }

        public string BaseUrl { get; private set; } = "";

        public Task<string> Report => _report.Task;

        private static int FreePort()
        {
            var l = new TcpListener(IPAddress.Loopback, 0);
            l.Start();
            int port = ((IPEndPoint)l.LocalEndpoint).Port;
            l.Stop();
            return port;
        }

        private async Task Serve()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext ctx;
                try { ctx = await _listener.GetContextAsync(); }
                catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
                try { await Handle(ctx); }
                catch (Exception e) when (e is HttpListenerException or IOException) { }   // the browser went away
                finally { ctx.Response.Close(); }
            }
        }

        private async Task Handle(HttpListenerContext ctx)
        {
            var req = ctx.Request;
            var res = ctx.Response;
            var local = Uri.UnescapeDataString(req.Url!.AbsolutePath).TrimStart('/');
            if (req.HttpMethod == "POST" && local == "report")
            {
                using var reader = new StreamReader(req.InputStream, Encoding.UTF8);
                _report.TrySetResult(await reader.ReadToEndAsync());
                res.StatusCode = 204;
                return;
            }
            byte[]? body = null;
            string type = "application/octet-stream";
            if (req.HttpMethod == "GET" && local == "model.glb" && _glb is not null)
            {
                body = _glb;
                type = "model/gltf-binary";
            }
            else if (req.HttpMethod == "GET")
            {
                var full = Path.GetFullPath(Path.Combine(_root, local));
                if (full.StartsWith(_root, StringComparison.Ordinal) && File.Exists(full))
                {
                    body = await File.ReadAllBytesAsync(full);
                    type = Path.GetExtension(full) switch
                    {
                        ".html" => "text/html; charset=utf-8",
                        ".js" or ".mjs" => "text/javascript; charset=utf-8",
                        _ => type,
                    };
                }
            }
            if (body is null)
            {
                res.StatusCode = 404;
                return;
            }
            res.ContentType = type;
            res.ContentLength64 = body.Length;
            await res.OutputStream.WriteAsync(body);
        }

        public void Dispose()
        {
            _stop.Dispose();
            _listener.Close();
            _report.TrySetCanceled();
        }
    }
}
