# message: list.eml
require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ge" :comparator "i;ascii-numeric" "received" "3" { fileinto "hops"; }
if address :count "eq" :comparator "i;ascii-numeric" "to" "2" { fileinto "two"; }
