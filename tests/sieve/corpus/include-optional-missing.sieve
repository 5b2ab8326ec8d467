require ["include", "fileinto"];
include :optional :personal "does-not-exist";
fileinto "ok";
