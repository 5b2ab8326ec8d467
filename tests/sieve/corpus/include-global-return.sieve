require ["include", "fileinto"];
include :global "early-return";
fileinto "after";
