# message: list.eml
require ["index", "fileinto"];
if header :index 9 :matches "x-tag" "*" { fileinto "nine"; } else { fileinto "none"; }
