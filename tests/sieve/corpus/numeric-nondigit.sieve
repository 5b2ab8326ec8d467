require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "gt" :comparator "i;ascii-numeric" "subject" "99999" { fileinto "inf"; }
if header :is :comparator "i;ascii-numeric" "from" "abc" { fileinto "eq-inf"; }
