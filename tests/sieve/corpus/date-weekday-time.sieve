require ["date", "fileinto", "variables"];
if date :zone "+0000" "date" "weekday" "1" { fileinto "monday"; }
if date :zone "+0000" :matches "date" "time" "*" { fileinto "t-${1}"; }
