require ["include", "variables"];
global "deep";
set "deep" "Level";
include :personal "mid";
