require ["editheader", "variables", "fileinto"];
set "n" "X-Dyn";
addheader "${n}" "v";
if exists "x-dyn" { fileinto "dyn"; }
