# message: list.eml
require ["editheader", "fileinto", "relational", "comparator-i;ascii-numeric"];
deleteheader :matches "x-tag" "t*";
if header :count "eq" :comparator "i;ascii-numeric" "x-tag" "1" { fileinto "one-left"; }
