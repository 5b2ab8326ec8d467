# message: list.eml
require ["relational", "fileinto"];
if header :count "lt" "x-tag" "10" { fileinto "lt10"; } else { fileinto "ge10-as-string"; }
