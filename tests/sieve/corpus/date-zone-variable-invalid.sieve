require ["date", "fileinto", "variables"];
set "z" "bogus";
if date :zone "${z}" :matches "date" "hour" "*" { fileinto "h${1}"; }
set "p" "century";
if date :matches "date" "${p}" "*" { fileinto "never"; }
