# message: list.eml
require ["variables", "fileinto"];
if header :matches "to" "*.*" { fileinto "${1}|${2}"; }
