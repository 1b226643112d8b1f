using TrellisCpu;

return TrellisCpuApp.Run(args);
