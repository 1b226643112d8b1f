using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Sparse;

/// <summary>
/// The voxel coordinates of a sparse tensor: <c>[N, 4]</c> integer rows (sample, x, y, z), contiguous per sample
/// and ordered by sample index, as TRELLIS requires. One instance is shared by every tensor with the same active
/// sites (feature replacements, convolutions, attention, norms), and it caches what depends only on the sites:
/// convolution neighbour maps, attention window partitions, and the maps of down- and up-sampling.
/// </summary>
/// <remarks>
/// The coordinates are validated once, on construction. The instance owns a private int32 copy of them (outside any
/// dispose scope), so it stays valid however long it is kept (e.g. by a <see cref="SparseLatentLayout"/> across
/// the steps of a sampler).
/// </remarks>
public sealed class SparseCoordinates
{
    private readonly Dictionary<string, object> _cache = new(StringComparer.Ordinal);
    private readonly object _lock = new();
    private SparseLatentLayout? _layout;
    private Tensor? _sampleIndex;
    private Tensor? _coords64;

    /// <summary>Validates <paramref name="coords"/> and creates a coordinate set.</summary>
    /// <param name="coords"><c>[N, 4]</c> integer tensor of (sample, x, y, z) rows, contiguous per sample and ordered by sample.</param>
    /// <param name="resolution">When given, every spatial coordinate must lie in <c>[0, resolution)</c>.</param>
    /// <param name="batchSize">The number of samples; by default the largest sample index + 1. Samples may have no rows.</param>
    /// <exception cref="ArgumentException">The coordinates are malformed: wrong shape or dtype, rows not contiguous
    /// per sample, negative or out-of-grid coordinates, values that do not fit int32 (the stored type), a voxel
    /// listed twice within a sample, or no rows and no <paramref name="batchSize"/>.</exception>
    /// <exception cref="InvalidDataException">The batch size needs more bookkeeping memory than
    /// <see cref="MdtDist.Core.IO.ReadLimits.MaxAllocationBytes"/>.</exception>
    public SparseCoordinates(Tensor coords, int? resolution = null, long? batchSize = null)
    {
        ArgumentNullException.ThrowIfNull(coords);
        if (coords.dim() != 2 || coords.shape[1] != 4)
            throw new ArgumentException($"coords must have shape [N, 4] (sample, x, y, z), found [{string.Join(", ", coords.shape)}].", nameof(coords));
        if (coords.dtype is not (ScalarType.Int32 or ScalarType.Int64 or ScalarType.Int16 or ScalarType.Int8 or ScalarType.Byte))
            throw new ArgumentException($"coords must be an integer tensor (int32 in TRELLIS), found dtype {coords.dtype}.", nameof(coords));
        if (resolution is { } r && r < 1)
            throw new ArgumentException($"resolution must be >= 1, found {r}.", nameof(resolution));
        if (batchSize is { } bs && bs < 1)
            throw new ArgumentException($"batchSize must be >= 1, found {bs}.", nameof(batchSize));

        long n = coords.shape[0];
        Resolution = resolution;
        Device = coords.device;
        using (var scope = torch.NewDisposeScope())
        {
            var c = coords.detach().to(ScalarType.Int64, torch.CPU).contiguous();
            var data = n == 0 ? Array.Empty<long>() : c.data<long>().ToArray();
            long maxSample = -1;
            var maxXyz = new long[] { -1, -1, -1 };
            for (long i = 0; i < n; i++)
            {
                long s = data[i * 4];
                if (s < 0)
                    throw new ArgumentException($"coords row {i} has a negative sample index {s}.", nameof(coords));
                if (s >= int.MaxValue)
                    throw new ArgumentException($"coords row {i} has sample index {s}, which does not fit the int32 coordinates (at most {int.MaxValue - 1}).", nameof(coords));
                if (s < maxSample)
                    throw new ArgumentException(
                        $"coords rows must be contiguous per sample and ordered by sample index (TRELLIS requires batch-contiguous rows): row {i} belongs to sample {s} but follows a row of sample {maxSample}.",
                        nameof(coords));
                maxSample = s;
                for (int a = 0; a < 3; a++)
                {
                    long v = data[i * 4 + 1 + a];
                    if (v > int.MaxValue)
                        throw new ArgumentException(
                            $"coords row {i} (sample {s}) has {"xyz"[a]} = {v}, which does not fit the int32 coordinates TRELLIS stores (at most {int.MaxValue}).",
                            nameof(coords));
                    if (v < 0 || (resolution is { } res && v >= res))
                        throw new ArgumentException(
                            $"coords row {i} (sample {s}) has {"xyz"[a]} = {v}, outside the grid [0, {(resolution is { } rr ? rr.ToString() : "inf")}).",
                            nameof(coords));
                    if (v > maxXyz[a]) maxXyz[a] = v;
                }
            }
            if (batchSize is { } b)
            {
                if (maxSample >= b)
                    throw new ArgumentException($"coords has sample index {maxSample}, but batchSize is {b}.", nameof(batchSize));
                BatchSize = b;
            }
            else
            {
                if (n == 0) throw new ArgumentException("coords has no rows: pass batchSize explicitly for an empty sparse tensor.", nameof(batchSize));
                BatchSize = maxSample + 1;
            }
            // counts and offsets: two longs per sample
            MdtDist.Core.IO.ReadLimits.Check(MdtDist.Core.IO.ReadLimits.Product(BatchSize, 16), () => $"a sparse tensor with batch size {BatchSize}");
            MaxCoordinate = (int)Math.Max(Math.Max(maxXyz[0], maxXyz[1]), maxXyz[2]);
            Extent = new[] { maxXyz[0] + 1, maxXyz[1] + 1, maxXyz[2] + 1 };

            var counts = new long[BatchSize];
            for (long i = 0; i < n; i++) counts[data[i * 4]]++;
            var offsets = new long[BatchSize + 1];
            for (int i = 0; i < BatchSize; i++) offsets[i + 1] = offsets[i] + counts[i];
            RowCounts = counts;
            RowOffsets = offsets;

            // Duplicate voxels within a sample: sort and look for equal neighbours. The linear code
            // ((s·X + x)·Y + y)·Z + z is used when it fits in 63 bits; otherwise (coordinates near the int32 limit)
            // the rows are sorted lexicographically.
            if (n > 1)
            {
                long ex = Extent[0], ey = Extent[1], ez = Extent[2];
                long span = MdtDist.Core.IO.ReadLimits.Product(BatchSize, ex, ey, ez);
                (long, long)? pair = null;
                if (span > 0)
                {
                    var code = ((c[.., 0] * ex + c[.., 1]) * ey + c[.., 2]) * ez + c[.., 3];
                    var (sorted, order) = code.sort();
                    var same = sorted[1..].eq(sorted[..^1]);
                    if (same.any().item<bool>())
                    {
                        long k = same.nonzero()[0, 0].item<long>();
                        pair = (order[k].item<long>(), order[k + 1].item<long>());
                    }
                }
                else
                {
                    var rows = new long[n];
                    for (long i = 0; i < n; i++) rows[i] = i;
                    int Compare(long a, long b)
                    {
                        for (int j = 0; j < 4; j++)
                        {
                            int cmp = data[a * 4 + j].CompareTo(data[b * 4 + j]);
                            if (cmp != 0) return cmp;
                        }
                        return 0;
                    }
                    Array.Sort(rows, Compare);
                    for (long i = 0; i + 1 < n && pair is null; i++)
                        if (Compare(rows[i], rows[i + 1]) == 0) pair = (rows[i], rows[i + 1]);
                }
                if (pair is var (r1, r2))
                {
                    long lo = Math.Min(r1, r2), hi = Math.Max(r1, r2);
                    throw new ArgumentException(
                        $"coords has a duplicate voxel: rows {lo} and {hi} are both (sample {data[lo * 4]}, x {data[lo * 4 + 1]}, y {data[lo * 4 + 2]}, z {data[lo * 4 + 3]}); every active site must appear once per sample.",
                        nameof(coords));
                }
            }
        }
        Coords = coords.detach().to(ScalarType.Int32, copy: true).DetachFromDisposeScope();
    }

    /// <summary>Creates a coordinate set from already validated parts (down-sampling, subdivision).</summary>
    internal SparseCoordinates(Tensor coordsInt32Owned, long batchSize, long[] rowCounts, int? resolution, long[] extent)
    {
        Coords = coordsInt32Owned.DetachFromDisposeScope();
        Device = Coords.device;
        BatchSize = batchSize;
        Resolution = resolution;
        RowCounts = rowCounts;
        var offsets = new long[batchSize + 1];
        for (int i = 0; i < batchSize; i++) offsets[i + 1] = offsets[i] + rowCounts[i];
        RowOffsets = offsets;
        Extent = extent;
        MaxCoordinate = (int)(Math.Max(Math.Max(extent[0], extent[1]), extent[2]) - 1);
    }

    /// <summary>The coordinates, <c>[N, 4]</c> int32 (sample, x, y, z), on <see cref="Device"/>. Do not modify or dispose.</summary>
    public Tensor Coords { get; }

    /// <summary>Number of active sites (rows).</summary>
    public long Count => Coords.shape[0];

    /// <summary>Number of samples.</summary>
    public long BatchSize { get; }

    /// <summary>The grid resolution the coordinates were checked against, if one was given.</summary>
    public int? Resolution { get; }

    /// <summary>The device of <see cref="Coords"/>.</summary>
    public Device Device { get; }

    /// <summary>The largest spatial coordinate (x, y or z) over all rows, or -1 when there are none.</summary>
    public int MaxCoordinate { get; }

    /// <summary>Rows per sample.</summary>
    public IReadOnlyList<long> RowCounts { get; }

    /// <summary>Row offsets per sample (<c>BatchSize + 1</c> values): sample b owns rows <c>[RowOffsets[b], RowOffsets[b+1])</c>.</summary>
    public IReadOnlyList<long> RowOffsets { get; }

    /// <summary>The layout of latents on these sites, for Core's per-sample reductions.</summary>
    public SparseLatentLayout Layout
    {
        get
        {
            lock (_lock) return _layout ??= new SparseLatentLayout(this);
        }
    }

    /// <summary>Max coordinate + 1 per spatial axis.</summary>
    internal long[] Extent { get; }

    /// <summary>The sample index of each row, <c>[N]</c> int64 on <see cref="Device"/>.</summary>
    internal Tensor SampleIndex
    {
        get
        {
            lock (_lock)
            {
                if (_sampleIndex is null)
                {
                    using var scope = torch.NewDisposeScope();
                    _sampleIndex = Coords[.., 0].to(ScalarType.Int64).contiguous().DetachFromDisposeScope();
                }
                return _sampleIndex;
            }
        }
    }

    /// <summary>The coordinates as int64, <c>[N, 4]</c>, on <see cref="Device"/>.</summary>
    internal Tensor Coords64
    {
        get
        {
            lock (_lock) return _coords64 ??= Coords.to(ScalarType.Int64).DetachFromDisposeScope();
        }
    }

    /// <summary>A cached value computed once per coordinate set; tensors inside must be detached from dispose scopes.</summary>
    internal T GetOrAdd<T>(string key, Func<T> create) where T : class
    {
        lock (_lock)
        {
            if (_cache.TryGetValue(key, out var v)) return (T)v;
        }
        T value;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
            value = create();
        lock (_lock)
        {
            if (_cache.TryGetValue(key, out var v)) return (T)v;
            _cache[key] = value;
            return value;
        }
    }

    /// <summary>Stores a cache entry (e.g. the up-sampling map registered by down-sampling).</summary>
    internal void Set(string key, object value)
    {
        lock (_lock) _cache[key] = value;
    }

    /// <summary>A cache entry, or null.</summary>
    internal T? Get<T>(string key) where T : class
    {
        lock (_lock) return _cache.TryGetValue(key, out var v) ? (T)v : null;
    }

    /// <summary>True when <paramref name="other"/> holds the same sites in the same row order.</summary>
    internal bool SameSites(SparseCoordinates other)
    {
        if (ReferenceEquals(this, other)) return true;
        if (Count != other.Count || BatchSize != other.BatchSize) return false;
        using var scope = torch.NewDisposeScope();
        return Coords.to(other.Device).eq(other.Coords).all().item<bool>();
    }
}
