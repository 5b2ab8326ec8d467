# message: multipart.eml
require ["date", "fileinto", "variables"];
if date :zone "+0200" :matches "date" "iso8601" "*" { set "i" "${1}"; }
if date :zone "+0200" :matches "date" "julian" "*" { set "j" "${1}"; }
fileinto "${j}";
