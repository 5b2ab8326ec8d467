require ["include", "fileinto"];
include :personal "stopper";
fileinto "not-reached";
