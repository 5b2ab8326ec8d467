require ["subaddress", "fileinto"];
if address :detail :matches "from" "*" { fileinto "has-detail"; } else { fileinto "none"; }
