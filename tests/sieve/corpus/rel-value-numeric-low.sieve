# message: list.eml
require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "10" { fileinto "Spam"; } else { fileinto "Ham"; }
