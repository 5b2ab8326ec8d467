# message: list.eml
require ["date", "index", "fileinto", "variables"];
if date :index 1 :last :zone "+0000" :matches "received" "second" "*" { fileinto "sec${1}"; }
