# message: group.eml
require ["date", "fileinto"];
if date :matches "x-bad-date" "year" "*" { fileinto "parsed"; } else { fileinto "unparsed"; }
