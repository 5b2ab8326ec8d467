require ["variables", "relational", "comparator-i;ascii-numeric", "fileinto"];
set "e" "";
if string :count "eq" :comparator "i;ascii-numeric" ["a", "${e}", "b"] "2" { fileinto "two"; }
