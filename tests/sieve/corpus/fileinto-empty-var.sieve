require ["fileinto", "variables"];
set "e" "";
fileinto "${e}";
