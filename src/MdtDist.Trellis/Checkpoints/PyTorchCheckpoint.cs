using System.Collections;
using System.IO.Compression;
using System.Text;
using Razorvine.Pickle;
using Razorvine.Pickle.Objects;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Checkpoints;

/// <summary>The container of a file written by PyTorch's <c>torch.save</c>.</summary>
public enum PyTorchFileFormat
{
    /// <summary>Not a <c>torch.save</c> file this reader knows (e.g. the pre-0.4 tar container, or not PyTorch at all).</summary>
    Unknown = 0,

    /// <summary>The zip container (<c>ARCHIVE/data.pkl</c> + <c>ARCHIVE/data/KEY</c>), PyTorch's default since 1.6.</summary>
    Zip = 1,

    /// <summary>The legacy container (PyTorch before 1.6, or <c>_use_new_zipfile_serialization=False</c>): magic number,
    /// protocol version and system info pickles, the object pickle, the storage key list, then each storage's bytes.</summary>
    Legacy = 2,
}

/// <summary>
/// Reads a state dict saved with <c>torch.save(state_dict, path)</c> (<c>.pth</c> / <c>.pt</c>) in either container
/// (<see cref="PyTorchFileFormat"/>): a mapping of names to tensors of any dtype PyTorch stores (float64/32/16,
/// bfloat16, integers, bool), including tensors that share a storage or view part of it. Pickle opcodes are decoded by
/// Razorvine.Pickle; this class handles PyTorch's tensor reconstruction (<c>torch._utils._rebuild_tensor_v2</c>) and
/// storage layout, and validates every tensor's extent against its storage. No code from the file is ever executed:
/// any Python class other than <c>collections.OrderedDict</c> and the tensor rebuild functions is rejected.
/// </summary>
public static class PyTorchCheckpoint
{
    private const string ConvertHint =
        "re-save it with PyTorch >= 1.6 (zip container): python -c \"import torch; torch.save(torch.load('IN', map_location='cpu'), 'OUT')\"";

    /// <summary>The legacy container's magic number, the first pickle of such a file.</summary>
    private static readonly System.Numerics.BigInteger LegacyMagic = System.Numerics.BigInteger.Parse("119547037146038801333356");

    static PyTorchCheckpoint()
    {
        Unpickler.registerConstructor("torch._utils", "_rebuild_tensor_v2", new RebuildTensor(v2: true));
        Unpickler.registerConstructor("torch._utils", "_rebuild_tensor", new RebuildTensor(v2: false));
        Unpickler.registerConstructor("torch._utils", "_rebuild_parameter", new RebuildParameter());
        Unpickler.registerConstructor("collections", "OrderedDict", new OrderedDictConstructor());
    }

    /// <summary>Tells the container of <paramref name="path"/> from its first bytes.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    public static PyTorchFileFormat DetectFormat(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"PyTorch checkpoint '{path}' does not exist.", path);
        Span<byte> head = stackalloc byte[4];
        using var fs = File.OpenRead(path);
        int n = fs.Read(head);
        if (n == 4 && head[0] == 0x50 && head[1] == 0x4B && head[2] == 0x03 && head[3] == 0x04) return PyTorchFileFormat.Zip;
        if (n >= 2 && head[0] == 0x80)
        {
            // A pickle: the legacy container starts with the pickled magic number.
            fs.Position = 0;
            try
            {
                using var u = new Unpickler();
                if (u.load(fs) is System.Numerics.BigInteger magic && magic == LegacyMagic) return PyTorchFileFormat.Legacy;
            }
            catch (Exception e) when (e is PickleException or InvalidCastException or IOException or InvalidOperationException)
            {
                return PyTorchFileFormat.Unknown;
            }
        }
        return PyTorchFileFormat.Unknown;
    }

    /// <summary>
    /// Loads the state dict of a <c>torch.save</c> file onto the CPU, each tensor in its stored dtype and shape
    /// (contiguous; a tensor that is a whole storage keeps that storage's memory, a part of a storage is copied, so two
    /// entries saved as the same tensor share memory as in PyTorch). The caller disposes the tensors.
    /// </summary>
    /// <param name="path">A <c>.pth</c> / <c>.pt</c> file holding a dict of tensors.</param>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">An unknown container (the message says how to convert it), a corrupt or
    /// truncated file, a value that is not a tensor, or a tensor whose extent exceeds its storage; the message names the
    /// file and the key.</exception>
    public static Dictionary<string, Tensor> LoadStateDict(string path)
    {
        var format = DetectFormat(path);
        try
        {
            return format switch
            {
                PyTorchFileFormat.Zip => LoadZip(path),
                PyTorchFileFormat.Legacy => LoadLegacy(path),
                _ => throw new InvalidDataException(
                    $"'{path}' is not a PyTorch checkpoint in the zip container (PyTorch >= 1.6) or the legacy pickle container; " +
                    $"if it is an older (tar) torch.save file, {ConvertHint}."),
            };
        }
        catch (CheckpointFormatException e)
        {
            throw new InvalidDataException(e.Message.Contains(path, StringComparison.Ordinal) ? e.Message : $"PyTorch checkpoint '{path}': {e.Message}", e);
        }
        catch (Exception e) when (e is PickleException or InvalidCastException or EndOfStreamException or InvalidOperationException
                                       or IndexOutOfRangeException or NullReferenceException or FormatException or OverflowException
                                       || (e is InvalidDataException && !e.Message.Contains(path, StringComparison.Ordinal)))
        {
            throw new InvalidDataException($"PyTorch checkpoint '{path}' ({format} container) is corrupt or not a state dict: {e.Message}", e);
        }
    }

    private static Dictionary<string, Tensor> LoadZip(string path)
    {
        using var zip = ZipFile.OpenRead(path);
        var pkl = zip.Entries.Where(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) || e.FullName == "data.pkl").ToList();
        if (pkl.Count != 1)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}': expected one 'data.pkl' in the zip container, found {pkl.Count}.");
        string prefix = pkl[0].FullName[..^"data.pkl".Length];
        var order = zip.GetEntry(prefix + "byteorder");
        if (order is not null)
        {
            using var r = new StreamReader(order.Open(), Encoding.ASCII);
            var bo = r.ReadToEnd().Trim();
            if (bo != "little") throw new CheckpointFormatException($"PyTorch checkpoint '{path}': byte order '{bo}' is not supported (little-endian only).");
        }
        var u = new TorchUnpickler();
        object root;
        using (var s = pkl[0].Open()) root = u.load(s);
        var storages = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var st in u.Storages.Values)
            {
                var entry = zip.GetEntry(prefix + "data/" + st.Key)
                    ?? throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storage '{st.Key}' has no entry 'data/{st.Key}' in the zip container.");
                long bytes = st.NumElements * st.ElementSize;
                if (entry.Length != bytes)
                    throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storage '{st.Key}' ({st.DType}) should hold {bytes} bytes, its entry holds {entry.Length}.");
                using var es = entry.Open();
                storages[st.Key] = ReadStorage(es, st, path);
            }
            return Materialise(root, storages, path);
        }
        finally
        {
            foreach (var t in storages.Values) t.Dispose();
        }
    }

    private static Dictionary<string, Tensor> LoadLegacy(string path)
    {
        using var fs = new BufferedStream(File.OpenRead(path), 1 << 16);
        using (var u0 = new Unpickler()) u0.load(fs);                           // magic number
        object protocol;
        using (var u1 = new Unpickler()) protocol = u1.load(fs);
        if (Convert.ToInt64(protocol) != 1001)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}': legacy container protocol version {protocol} is not supported (1001 expected); {ConvertHint}.");
        object sysInfo;
        using (var u2 = new Unpickler()) sysInfo = u2.load(fs);
        if (sysInfo is Hashtable info && info["little_endian"] is bool le && !le)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}' was written on a big-endian machine; {ConvertHint}.");
        var u = new TorchUnpickler();
        var root = u.load(fs);
        object keysObj;
        using (var uk = new Unpickler()) keysObj = uk.load(fs);
        if (keysObj is not ArrayList keys)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}': the legacy storage key list is missing.");
        var storages = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            Span<byte> len = stackalloc byte[8];
            foreach (var k in keys)
            {
                var key = (string)k;
                if (!u.Storages.TryGetValue(key, out var st))
                    throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storage '{key}' is listed but no tensor refers to it.");
                fs.ReadExactly(len);
                long n = BitConverter.ToInt64(len);
                if (n != st.NumElements)
                    throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storage '{key}' records {n} elements, the tensors expect {st.NumElements}.");
                storages[key] = ReadStorage(fs, st, path);
            }
            var unread = u.Storages.Keys.Where(k => !storages.ContainsKey(k)).ToList();
            if (unread.Count > 0)
                throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storages [{string.Join(", ", unread)}] are referenced but not stored.");
            return Materialise(root, storages, path);
        }
        finally
        {
            foreach (var t in storages.Values) t.Dispose();
        }
    }

    private static Tensor ReadStorage(Stream s, StorageRef st, string path)
    {
        long bytes = st.NumElements * st.ElementSize;
        if (bytes > Array.MaxLength)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}': storage '{st.Key}' has {bytes} bytes, more than one array can hold.");
        var buffer = new byte[bytes];
        try
        {
            s.ReadExactly(buffer);
        }
        catch (EndOfStreamException)
        {
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}' is truncated: storage '{st.Key}' needs {bytes} bytes.");
        }
        var t = torch.empty(new[] { st.NumElements }, st.DType);
        if (bytes > 0) t.bytes = buffer;
        return t;
    }

    private static Dictionary<string, Tensor> Materialise(object root, Dictionary<string, Tensor> storages, string path)
    {
        if (root is not Hashtable dict)
            throw new CheckpointFormatException($"PyTorch checkpoint '{path}' holds a {Describe(root)}, not a state dict (a dict of tensors); save model.state_dict().");
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (DictionaryEntry kv in dict)
            {
                if (kv.Key is not string name)
                    throw new CheckpointFormatException($"PyTorch checkpoint '{path}': a key is a {Describe(kv.Key)}, not a string.");
                if (kv.Value is not PendingTensor p)
                    throw new CheckpointFormatException(
                        $"PyTorch checkpoint '{path}': entry '{name}' is a {Describe(kv.Value)}, not a tensor; the file must hold a plain state dict (torch.save(model.state_dict(), path)).");
                var storage = storages[p.Storage.Key];
                long numel = 1, extent = p.Offset;
                for (int i = 0; i < p.Shape.Length; i++)
                {
                    if (p.Shape[i] < 0 || p.Stride[i] < 0)
                        throw new CheckpointFormatException($"PyTorch checkpoint '{path}': tensor '{name}' has a negative size or stride.");
                    numel *= p.Shape[i];
                    extent += (p.Shape[i] - 1) * p.Stride[i];
                }
                if (p.Offset < 0 || (numel > 0 && extent >= p.Storage.NumElements))
                    throw new CheckpointFormatException(
                        $"PyTorch checkpoint '{path}': tensor '{name}' [{string.Join(", ", p.Shape)}] at offset {p.Offset} reaches element {extent} of storage '{p.Storage.Key}' ({p.Storage.NumElements} elements).");
                var view = numel == 0 ? torch.empty(p.Shape, storage.dtype) : storage.as_strided(p.Shape, p.Stride, p.Offset);
                if (view.is_contiguous() && numel == p.Storage.NumElements)
                {
                    result[name] = view;   // the whole storage: share its memory (libtorch keeps it alive) instead of copying
                }
                else
                {
                    result[name] = view.contiguous().clone();
                    view.Dispose();
                }
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    private static string Describe(object? o) => o switch
    {
        null => "None",
        Hashtable => "dict",
        ArrayList => "list",
        object[] => "tuple",
        ClassDict cd => $"Python object of class {cd.ClassName}",
        ClassDictConstructor c => $"Python class {c.module}.{c.name}",
        _ => o.GetType().Name,
    };

    private sealed class CheckpointFormatException(string message) : Exception(message);

    private sealed record StorageRef(string Key, ScalarType DType, long ElementSize, long NumElements);

    private sealed record PendingTensor(StorageRef Storage, long Offset, long[] Shape, long[] Stride);

    private sealed class TorchUnpickler : Unpickler
    {
        public Dictionary<string, StorageRef> Storages { get; } = new(StringComparer.Ordinal);

        protected override object persistentLoad(object pid)
        {
            if (pid is not object[] t || t.Length < 5 || t[0] is not string kind || kind != "storage")
                throw new CheckpointFormatException($"unknown persistent id {Describe(pid)} (only tensor storages are supported).");
            if (t[1] is not ClassDictConstructor cls)
                throw new CheckpointFormatException($"storage type {Describe(t[1])} is not a torch storage class.");
            var key = Convert.ToString(t[2], System.Globalization.CultureInfo.InvariantCulture)!;
            long numel = Convert.ToInt64(t[4]);
            var (dtype, size) = cls.name switch
            {
                "DoubleStorage" => (ScalarType.Float64, 8),
                "FloatStorage" => (ScalarType.Float32, 4),
                "HalfStorage" => (ScalarType.Float16, 2),
                "BFloat16Storage" => (ScalarType.BFloat16, 2),
                "LongStorage" => (ScalarType.Int64, 8),
                "IntStorage" => (ScalarType.Int32, 4),
                "ShortStorage" => (ScalarType.Int16, 2),
                "CharStorage" => (ScalarType.Int8, 1),
                "ByteStorage" => (ScalarType.Byte, 1),
                "BoolStorage" => (ScalarType.Bool, 1),
                _ => throw new CheckpointFormatException($"storage type {cls.module}.{cls.name} is not supported."),
            };
            if (numel < 0) throw new CheckpointFormatException($"storage '{key}' has a negative size {numel}.");
            if (Storages.TryGetValue(key, out var known))
            {
                if (known.DType != dtype || known.NumElements != numel)
                    throw new CheckpointFormatException($"storage '{key}' is referenced as {known.DType}[{known.NumElements}] and as {dtype}[{numel}].");
                return known;
            }
            var st = new StorageRef(key, dtype, size, numel);
            Storages[key] = st;
            return st;
        }
    }

    private sealed class RebuildTensor(bool v2) : IObjectConstructor
    {
        public object construct(object[] args)
        {
            int need = v2 ? 6 : 4;
            if (args.Length < need)
                throw new CheckpointFormatException($"torch._utils.{(v2 ? "_rebuild_tensor_v2" : "_rebuild_tensor")} got {args.Length} arguments, expected at least {need}.");
            if (args[0] is not StorageRef st) throw new CheckpointFormatException($"a tensor's storage is a {Describe(args[0])}.");
            var shape = Ints(args[2]);
            var stride = Ints(args[3]);
            if (shape.Length != stride.Length) throw new CheckpointFormatException($"a tensor has {shape.Length} sizes but {stride.Length} strides.");
            return new PendingTensor(st, Convert.ToInt64(args[1]), shape, stride);
        }

        private static long[] Ints(object o) => o switch
        {
            object[] a => a.Select(Convert.ToInt64).ToArray(),
            ArrayList l => l.Cast<object>().Select(Convert.ToInt64).ToArray(),
            _ => throw new CheckpointFormatException($"a tensor size or stride is a {Describe(o)}, not a tuple."),
        };
    }

    // torch.nn.Parameter in a saved dict: keep its data (the checkpoint then still is a name -> tensor mapping).
    private sealed class RebuildParameter : IObjectConstructor
    {
        public object construct(object[] args) =>
            args.Length >= 1 && args[0] is PendingTensor p ? p : throw new CheckpointFormatException("torch._utils._rebuild_parameter without tensor data.");
    }

    private sealed class OrderedDictConstructor : IObjectConstructor
    {
        public object construct(object[] args) => new PickledOrderedDict();
    }

    /// <summary>collections.OrderedDict as a Hashtable; its pickled attribute state (a state dict's _metadata) is ignored.</summary>
    private sealed class PickledOrderedDict : Hashtable
    {
#pragma warning disable IDE1006, CA1822 // the name and instance shape Razorvine's BUILD opcode looks up
        public void __setstate__(Hashtable state) { }
#pragma warning restore IDE1006, CA1822
    }
}
