using MiniTrellis;

return MiniTrellisApp.Run(args);
