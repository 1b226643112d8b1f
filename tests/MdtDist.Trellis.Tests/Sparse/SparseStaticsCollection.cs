using Xunit;

namespace MdtDist.Trellis.Tests.Sparse;

/// <summary>
/// Tests that set the sparse modules' internal path switches (<c>SparseConv3d.PerOffsetEnabled</c>,
/// <c>AttentionPlan.WindowLengthQuantum</c>, <c>FeedForwardNet.RowChunkElements</c>) to force one path: they run alone,
/// so that no test of another class runs while a switch is off its default.
/// </summary>
[CollectionDefinition("SparseStatics", DisableParallelization = true)]
public sealed class SparseStaticsCollection;
