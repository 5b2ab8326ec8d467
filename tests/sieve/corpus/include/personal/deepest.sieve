require ["include", "variables", "fileinto"];
global "deep";
fileinto "${deep}";
