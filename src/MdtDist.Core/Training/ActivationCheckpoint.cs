using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MdtDist.Core.Training;

/// <summary>
/// Gradient (activation) checkpointing for TorchSharp, which has no <c>torch.utils.checkpoint</c>: a checkpointed
/// function runs its forward without recording the autograd graph, keeping only its inputs; the backward pass runs the
/// forward again with gradients enabled and back-propagates the incoming gradient into the inputs and into the
/// parameters the function uses. Memory of the function's intermediate activations is traded for one more forward.
/// </summary>
/// <remarks>
/// Given a deterministic <c>function</c> (no dropout or random draws; TRELLIS's blocks have none), the recomputed forward
/// is the same sequence of operations on the same values as the first one, so the gradients equal those of the plain
/// call bit for bit. Inputs that do not require gradients (e.g. integer coordinates) should be captured by the closure
/// instead of passed in <c>inputs</c>. The parameters are edges of the autograd graph like the inputs, so every trainer
/// (and <c>torch.autograd.grad</c>) sees their gradients exactly as without checkpointing.
/// </remarks>
public static class ActivationCheckpoint
{
    /// <summary>
    /// <c>function(inputs)</c>, checkpointed when gradients are being recorded (otherwise a plain call).
    /// </summary>
    /// <param name="function">The computation: given the (detached, in backward) inputs, returns one tensor. It must use
    /// no tensor that requires a gradient other than <paramref name="inputs"/> and <paramref name="parameters"/>.</param>
    /// <param name="inputs">The tensors the function reads (null entries allowed and passed as null).</param>
    /// <param name="parameters">Every trainable parameter the function uses (those not requiring a gradient are skipped).</param>
    /// <returns>The function's result, attached to the autograd graph by one node.</returns>
    /// <exception cref="ArgumentException">No inputs.</exception>
    public static Tensor Run(Func<Tensor?[], Tensor> function, IReadOnlyList<Tensor?> inputs, IEnumerable<Parameter> parameters)
    {
        ArgumentNullException.ThrowIfNull(function);
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(parameters);
        if (inputs.Count == 0) throw new ArgumentException("a checkpointed function needs at least one input.", nameof(inputs));
        var trainable = parameters.Where(p => p.requires_grad).ToArray();
        if (!torch.is_grad_enabled() || (!inputs.Any(t => t is not null && t.requires_grad) && trainable.Length == 0))
            return function(inputs.ToArray());
        var args = new object?[1 + inputs.Count + trainable.Length];
        args[0] = new Recipe(function, inputs.Count, inputs.Select(t => t is not null && t.requires_grad).ToArray());
        for (int i = 0; i < inputs.Count; i++) args[1 + i] = inputs[i];
        for (int i = 0; i < trainable.Length; i++) args[1 + inputs.Count + i] = trainable[i];
        return CheckpointFunction.apply(args!);
    }

    /// <summary>What the backward pass needs besides the saved inputs.</summary>
    private sealed record Recipe(Func<Tensor?[], Tensor> Function, int InputCount, bool[] InputRequiresGrad);

    /// <summary>
    /// The autograd node. Arguments: the <see cref="Recipe"/>, the inputs, then the parameters (the tensors among them are
    /// the node's edges in the graph).
    /// </summary>
    private sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
    {
        public override string Name => "ActivationCheckpoint";

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            // Runs under no_grad (TorchSharp's Function.apply): no intermediate activation is kept.
            var recipe = (Recipe)vars[0];
            var inputs = new Tensor?[recipe.InputCount];
            for (int i = 0; i < inputs.Length; i++) inputs[i] = vars[1 + i] as Tensor;
            ctx.save_data("recipe", recipe);
            ctx.save_data("parameters", vars.Skip(1 + recipe.InputCount).Cast<Tensor>().ToArray());
            ctx.save_data("present", inputs.Select(t => t is not null).ToArray());
            ctx.save_for_backward(inputs.Where(t => t is not null).Cast<Tensor>().ToList());
            using var scope = torch.NewDisposeScope();
            return recipe.Function(inputs).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
        {
            var recipe = (Recipe)ctx.get_data("recipe");
            var parameters = (Tensor[])ctx.get_data("parameters");
            var present = (bool[])ctx.get_data("present");
            using var scope = torch.NewDisposeScope();
            var saved = ctx.get_saved_variables();
            var inputs = new Tensor?[recipe.InputCount];
            for (int i = 0, s = 0; i < inputs.Length; i++)
                if (present[i]) inputs[i] = saved[s++].detach().requires_grad_(recipe.InputRequiresGrad[i]);

            Tensor output;
            using (torch.enable_grad()) output = recipe.Function(inputs);
            var wrt = new List<Tensor>();
            for (int i = 0; i < inputs.Length; i++)
                if (recipe.InputRequiresGrad[i]) wrt.Add(inputs[i]!);
            wrt.AddRange(parameters);
            var grads = output.requires_grad
                ? torch.autograd.grad(new[] { output }, wrt, new[] { grad_output }, allow_unused: true)
                : wrt.Select(_ => (Tensor)null!).ToList();

            // One gradient per argument of forward: none for the recipe, one per input and parameter.
            var result = new List<Tensor>(1 + inputs.Length + parameters.Length) { null! };
            int g = 0;
            for (int i = 0; i < inputs.Length; i++)
                result.Add(recipe.InputRequiresGrad[i] ? Keep(grads[g++]) : null!);
            for (int i = 0; i < parameters.Length; i++) result.Add(Keep(grads[g++]));
            return result;
        }

        /// <summary>A gradient survives this scope (the engine takes its own reference); an undefined one is null.</summary>
        private static Tensor Keep(Tensor? t) => t is null || t.IsInvalid ? null! : t.MoveToOuterDisposeScope();
    }
}
