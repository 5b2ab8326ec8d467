# message: encoded.eml
require ["date", "fileinto", "variables"];
if date :zone "+0900" :matches "date" "date" "*" { fileinto "${1}"; }
