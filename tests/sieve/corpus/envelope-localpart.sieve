require ["envelope", "fileinto"];
if envelope :localpart :matches "from" "b*" { fileinto "b"; }
