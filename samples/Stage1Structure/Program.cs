using Stage1Structure;

return Stage1StructureApp.Run(args, Console.Out);
