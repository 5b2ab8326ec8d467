require ["body", "fileinto"];
if body :matches "*can we meet*" { fileinto "m"; }
