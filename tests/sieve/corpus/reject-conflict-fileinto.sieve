require ["reject", "fileinto"];
fileinto "Keep";
reject "no";
