require ["include", "fileinto"];
fileinto "one";
return;
fileinto "two";
