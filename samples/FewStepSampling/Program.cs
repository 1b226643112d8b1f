using FewStepSampling;

return FewStepSamplingApp.Run(args, Console.Out);
