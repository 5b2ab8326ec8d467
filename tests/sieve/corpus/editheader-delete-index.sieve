# message: list.eml
require ["editheader", "index", "fileinto", "variables"];
deleteheader :index 1 "x-tag";
if header :index 1 :matches "x-tag" "*" { fileinto "${1}"; }
