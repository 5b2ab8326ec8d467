# message: encoded.eml
require ["date", "relational", "fileinto"];
if date :value "ge" :zone "+0000" "date" "date" "2026-06-01" { fileinto "h2"; } else { fileinto "h1"; }
