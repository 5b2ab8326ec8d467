require ["subaddress", "fileinto"];
if address :user "cc" "dave" { fileinto "dave"; }
if address :detail "cc" "work" { fileinto "dave-work"; }
