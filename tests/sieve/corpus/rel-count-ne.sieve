# message: list.eml
require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ne" :comparator "i;ascii-numeric" "x-tag" "3" { fileinto "no"; } else { fileinto "three"; }
