require ["editheader", "index", "fileinto"];
addheader :last "X-Order" "second";
addheader "X-Order" "first";
if header :index 1 "x-order" "first" { fileinto "ordered"; }
