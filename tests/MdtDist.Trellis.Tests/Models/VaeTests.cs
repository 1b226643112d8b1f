using MdtDist.TestSupport;
using MdtDist.Trellis.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Models;

public class VaeTests
{
    [Fact]
    public void OccupiedCoordsAreArgwhereOfPositiveLogitsAsBatchXyz()
    {
        using var scope = torch.NewDisposeScope();
        var logits = torch.full(new long[] { 2, 1, 3, 4, 5 }, -1.0, dtype: ScalarType.Float64);
        logits[0, 0, 2, 1, 4] = torch.tensor(0.5);
        logits[1, 0, 0, 3, 0] = torch.tensor(2.0);
        logits[1, 0, 0, 0, 1] = torch.tensor(1e-9);
        logits[1, 0, 2, 2, 2] = torch.tensor(0.0);      // not > 0
        var coords = SparseStructureDecoder.OccupiedCoords(logits);
        Assert.Equal(ScalarType.Int32, coords.dtype);
        Assert.Equal(new long[] { 3, 4 }, coords.shape);
        Assert.Equal(new[] { 0, 2, 1, 4, 1, 0, 0, 1, 1, 0, 3, 0 }, coords.data<int>().ToArray());
        Assert.Equal(new long[] { 0, 4 }, SparseStructureDecoder.OccupiedCoords(torch.zeros(new long[] { 1, 1, 2, 2, 2 })).shape);
        Assert.Throws<ArgumentException>(() => SparseStructureDecoder.OccupiedCoords(torch.zeros(new long[] { 2, 2, 2 })));
    }

    [Fact]
    public void DecodeOccupancyThresholdsTheDecoderLogits()
    {
        using var scope = torch.NewDisposeScope();
        using var dec = TinyModels.Decoder(seed: 31);
        var z = torch.randn(new long[] { 2, 3, 4, 4, 4 }, dtype: ScalarType.Float64, generator: new Generator(30));
        using var noGrad = torch.no_grad();
        var logits = dec.forward(z);
        Assert.Equal(new long[] { 2, 1, 8, 8, 8 }, logits.shape);
        var coords = dec.DecodeOccupancy(z);
        long positives = (logits > 0).sum().item<long>();
        Assert.True(positives > 0 && positives < logits.numel());
        Assert.Equal(positives, coords.shape[0]);
        foreach (var row in Enumerable.Range(0, (int)coords.shape[0]).Where(i => i % 37 == 0))
        {
            var r = coords[row].data<int>().ToArray();
            Assert.True(logits[r[0], 0, r[1], r[2], r[3]].item<double>() > 0);
        }
    }

    [Fact]
    public void EncoderSamplesThePosteriorWithTheGivenGenerator()
    {
        using var scope = torch.NewDisposeScope();
        using var enc = TinyModels.Encoder(seed: 32);
        var x = (torch.rand(new long[] { 1, 1, 8, 8, 8 }, dtype: ScalarType.Float64, generator: new Generator(32)) > 0.7).to(ScalarType.Float64);
        using var noGrad = torch.no_grad();
        var (z, mean, logvar) = enc.Encode(x, samplePosterior: true, generator: new Generator(5));
        Assert.Equal(new long[] { 1, 3, 4, 4, 4 }, mean.shape);
        var eps = torch.randn(mean.shape, dtype: ScalarType.Float64, generator: new Generator(5));
        Assert.True(TinyModels.MaxAbsDiff(mean + torch.exp(0.5 * logvar) * eps, z) < 1e-14);
        var (z0, mean0, _) = enc.Encode(x);
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(z0, mean0));
        Assert.Equal(0.0, TinyModels.MaxAbsDiff(mean, mean0));
    }

    [Fact]
    public void GroupNormVariantBuildsWithTrellisNames()
    {
        using var scope = torch.NewDisposeScope();
        var cfg = new SparseStructureDecoderConfig { OutChannels = 1, LatentChannels = 2, NumResBlocks = 1, NumResBlocksMiddle = 1, Channels = new long[] { 32 }, NormType = "group" };
        using var dec = new SparseStructureDecoder(cfg, ScalarType.Float64);
        var names = dec.state_dict().Keys.ToHashSet();
        Assert.Contains("middle_block.0.norm1.weight", names);
        Assert.Contains("out_layer.0.bias", names);
        using var noGrad = torch.no_grad();
        var y = dec.forward(torch.randn(new long[] { 1, 2, 2, 2, 2 }, dtype: ScalarType.Float64, generator: new Generator(33)));
        Assert.Equal(new long[] { 1, 1, 2, 2, 2 }, y.shape);
        Assert.Throws<ArgumentException>(() => new SparseStructureDecoder(cfg with { Channels = new long[] { 16 } }, ScalarType.Float64));
    }

    [Fact]
    public void ReducedPrecisionDecoderTorsoStaysClose()
    {
        using var scope = torch.NewDisposeScope();
        using var a = TinyModels.Randomize(new SparseStructureDecoder(TinyModels.DecoderConfig), 40);
        using var b = TinyModels.Randomize(new SparseStructureDecoder(TinyModels.DecoderConfig), 40);
        b.SetTorsoDType(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, b.state_dict()["blocks.0.conv1.weight"].dtype);
        Assert.Equal(ScalarType.Float32, b.state_dict()["blocks.0.norm1.weight"].dtype);
        Assert.Equal(ScalarType.Float32, b.state_dict()["input_layer.weight"].dtype);
        var z = torch.randn(new long[] { 1, 3, 4, 4, 4 }, generator: new Generator(41));
        using var noGrad = torch.no_grad();
        var ya = a.forward(z);
        var yb = b.forward(z);
        // Bar derived from the format and the depth (ReducedPrecision): 6·u·L with u = 2^-8 and L the bf16 convolutions.
        int layers = ReducedPrecision.RoundedLayers(b, ScalarType.BFloat16);
        Assert.True(layers >= 5, $"the torso has {layers} bf16 layers");
        double err = ReducedPrecision.RelativeError(ya, yb);
        Assert.True(err < ReducedPrecision.Tolerance(ScalarType.BFloat16, layers), $"bf16 torso relative error {err} over {layers} layers");
        // ...and the bf16 path really ran: the error exceeds what float32 alone could produce.
        Assert.True(err > ReducedPrecision.UnitRoundoff(ScalarType.Float32), $"bf16 torso relative error {err}");
    }
}
