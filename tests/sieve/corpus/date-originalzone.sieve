# message: encoded.eml
require ["date", "fileinto", "variables"];
if date :originalzone "date" "zone" "-0500" { fileinto "est"; }
if date :originalzone :matches "date" "hour" "*" { fileinto "h${1}"; }
