require ["envelope", "relational", "comparator-i;ascii-numeric", "fileinto"];
if envelope :count "eq" :comparator "i;ascii-numeric" ["from", "to"] "2" { fileinto "two"; }
