require ["date", "fileinto", "variables"];
if date :zone "-0330" :matches "date" "std11" "*" { set "s" "${1}"; }
if date :zone "-0330" :matches "date" "zone" "*" { fileinto "${1}"; }
