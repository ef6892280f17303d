require ["include", "variables", "fileinto"];
global "target";
set "target" "Shared";
include :personal "use-target";
