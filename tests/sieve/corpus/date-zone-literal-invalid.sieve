require ["date", "fileinto", "variables"];
if date :zone "bogus" :matches "date" "hour" "*" { fileinto "h${1}"; }
