using TrellisGenerate;

return TrellisGenerateApp.Run(args, Console.Out);
