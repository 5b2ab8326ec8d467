require ["variables", "fileinto"];
set "box" "Lists";
set "sub" "dev";
fileinto "${box}.${sub}";
