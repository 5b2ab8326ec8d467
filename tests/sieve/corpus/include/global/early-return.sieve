require ["include", "fileinto"];
if true { fileinto "global"; return; }
fileinto "never";
