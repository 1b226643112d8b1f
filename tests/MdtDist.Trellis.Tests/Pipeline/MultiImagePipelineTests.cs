using MdtDist.Trellis.Conditioning;
using MdtDist.Trellis.Pipeline;
using MdtDist.Trellis.Tests.Golden;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Pipeline;

/// <summary>TRELLIS's multi-image runs through <see cref="TrellisPipeline.Run(TrellisCondition, TrellisRunOptions?)"/> (tiny float32 networks; the decoder is skipped).</summary>
public class MultiImagePipelineTests
{
    private static readonly StageSampler Sampler = StageSampler.TrellisImageLarge with { Steps = 3 };

    private static TrellisOutput RunViews(TrellisPipeline p, Tensor views, MultiImageMode? mode, int steps = 3, int samples = 1) =>
        p.Run(TrellisCondition.FromImageFeatures(views), new TrellisRunOptions
        {
            Seed = 3, NumSamples = samples, MultiImage = mode, Formats = TrellisFormats.None,
            // two-call guidance: multidiffusion evaluates its passes one by one, so bit-identity needs the same order
            StructureSampler = Sampler with { Steps = steps, BatchedGuidance = false }, LatentSampler = Sampler with { Steps = steps, BatchedGuidance = false },
        });

    [Theory]
    [InlineData(MultiImageMode.Stochastic)]
    [InlineData(MultiImageMode.MultiDiffusion)]
    public void TwoCopiesOfOneViewGiveTheSingleImageResult(MultiImageMode mode)
    {
        var p = TinyPipeline.Create(ScalarType.Float32);
        using var scope = torch.NewDisposeScope();
        var cond = TinyPipeline.Condition(1, dtype: ScalarType.Float32);
        using var single = RunViews(p, cond, null, samples: 2);
        using var multi = RunViews(p, torch.cat(new[] { cond, cond }), mode, samples: 2);
        // Stochastic picks one of two equal views per step; multidiffusion averages two equal predictions, (v + v) / 2 = v
        // exactly in floating point: both reproduce the single-image run bit for bit.
        Assert.Equal(0.0, GoldenAssert.RelativeError(single.StructureLatent, multi.StructureLatent));
        Assert.Equal(single.Coords.shape, multi.Coords.shape);
        Assert.True(single.Coords.eq(multi.Coords).all().item<bool>());
        for (int i = 0; i < 2; i++)
        {
            if (single.Samples[i].Latent is null) continue;
            Assert.Equal(0.0, GoldenAssert.RelativeError(single.Samples[i].Latent!, multi.Samples[i].Latent!));
        }
    }

    [Fact]
    public void StochasticSwitchesViewsPerStep()
    {
        var p = TinyPipeline.Create(ScalarType.Float32);
        using var scope = torch.NewDisposeScope();
        var a = TinyPipeline.Condition(1, seed: 7, dtype: ScalarType.Float32);
        var b = TinyPipeline.Condition(1, seed: 8, dtype: ScalarType.Float32);
        var views = torch.cat(new[] { a, b });
        // One step: only step 0 runs, conditioned on view 0.
        using var oneStep = RunViews(p, views, MultiImageMode.Stochastic, steps: 1);
        using var onlyA = RunViews(p, a, null, steps: 1);
        Assert.Equal(0.0, GoldenAssert.RelativeError(onlyA.StructureLatent, oneStep.StructureLatent));
        // Three steps: views a, b, a; the result is neither single-view run.
        using var three = RunViews(p, views, MultiImageMode.Stochastic, steps: 3);
        using var threeA = RunViews(p, a, null, steps: 3);
        using var threeB = RunViews(p, b, null, steps: 3);
        Assert.True(GoldenAssert.RelativeError(threeA.StructureLatent, three.StructureLatent) > 1e-6);
        Assert.True(GoldenAssert.RelativeError(threeB.StructureLatent, three.StructureLatent) > 1e-6);
    }
}

/// <summary>The documented one-liner: <c>pipeline.Run(encoder, "photo.png", options)</c>.</summary>
public class ImageToPipelineTests
{
    [Fact]
    public void RunsFromAPictureFileThroughTheEncoder()
    {
        var p = TinyPipeline.Create();
        var dino = TinyPipeline.Randomize(new Dinov2Model(new Dinov2Config(16, 1, 2, ImageSize: 28)), seed: 11);
        using var encoder = new ImageConditionEncoder(dino);
        var picture = Path.Combine(AppContext.BaseDirectory, "TestData", "image_preprocess", "tall_input.png");
        using var result = p.Run(encoder, picture, new TrellisRunOptions
        {
            Seed = 1, Formats = TrellisFormats.None,
            StructureSampler = StageSampler.Student(1), LatentSampler = StageSampler.Student(1),
        });
        Assert.Equal(1, result.StructureEvaluations);
        Assert.Single(result.Samples);
    }
}
