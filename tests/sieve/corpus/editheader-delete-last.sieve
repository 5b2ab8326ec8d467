# message: list.eml
require ["editheader", "index", "fileinto", "variables"];
deleteheader :index 1 :last "x-tag";
if header :index 1 :last :matches "x-tag" "*" { fileinto "${1}"; }
