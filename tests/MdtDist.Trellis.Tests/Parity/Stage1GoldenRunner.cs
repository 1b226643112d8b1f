using System.Text.Json.Nodes;
using MdtDist.Trellis.Checkpoints;
using MdtDist.Trellis.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MdtDist.Trellis.Tests.Golden;

/// <summary>Builds a golden case's network (in float64 unless told) from its config and loads its <c>model.*</c> state dict strictly.</summary>
internal static class GoldenModels
{
    public static nn.Module Build(GoldenCase c, ScalarType dtype = ScalarType.Float64)
    {
        var args = JsonNode.Parse(c.Config.GetProperty("args").GetRawText())!.AsObject();
        return TrellisCheckpoint.Build(new TrellisModelConfig(c.ConfigName, args), dtype);
    }

    public static T Load<T>(GoldenCase c, ScalarType dtype = ScalarType.Float64) where T : nn.Module
    {
        var model = (T)Build(c, dtype);
        TrellisCheckpoint.LoadStateDict(model, c.WithPrefix("model."), strict: true, source: $"golden case {c.Name}");
        model.eval();
        return model;
    }
}

/// <summary>Shorthand for <see cref="GoldenAssert"/> (kept for the runners that call it).</summary>
internal static class GoldenReport
{
    public static void Output(GoldenCase c, string name, Tensor actual) => GoldenAssert.Output(c, name, actual);

    public static void Close(GoldenCase c, string name, Tensor expected, Tensor actual, double tolerance) => GoldenAssert.Close(c, name, expected, actual, tolerance);
}

/// <summary>The stage-1 network forwards: ss_flow (flow DiT), ss_dec (structure decoder), ss_enc (structure encoder).</summary>
public sealed class Stage1GoldenRunner : IGoldenRunner
{
    public bool CanRun(GoldenCase c) => c.Kind is "ss_flow" or "ss_dec" or "ss_enc";

    public void Run(GoldenCase c)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        switch (c.Kind)
        {
            case "ss_flow":
            {
                using var model = (SparseStructureFlowModel)GoldenModels.Build(c);
                // The float64 APE computed at construction must equal the stored buffer before it is overwritten.
                GoldenReport.Close(c, "model.pos_emb (recomputed)", c["model.pos_emb"], model.state_dict()["pos_emb"], 1e-14);
                TrellisCheckpoint.LoadStateDict(model, c.WithPrefix("model."), strict: true, source: $"golden case {c.Name}");
                model.AttentionBackend = AttentionBackend.Math;
                var v = model.forward(c["in.x"], c["in.t"], c["in.cond"]);
                GoldenReport.Output(c, "out.v", v);
                break;
            }
            case "ss_dec":
            {
                using var model = GoldenModels.Load<SparseStructureDecoder>(c);
                GoldenReport.Output(c, "out.logits", model.forward(c["in.z"]));
                break;
            }
            case "ss_enc":
            {
                using var model = GoldenModels.Load<SparseStructureEncoder>(c);
                var (z, mean, logvar) = model.Encode(c["in.x"]);
                GoldenReport.Output(c, "out.z", z);
                GoldenReport.Output(c, "out.mean", mean);
                GoldenReport.Output(c, "out.logvar", logvar);
                break;
            }
        }
    }
}
