require ["comparator-i;ascii-numeric", "fileinto"];
if header :is :comparator "i;ascii-numeric" "X-Priority" "003" { fileinto "p3"; }
