# message: encoded.eml
require ["subaddress", "fileinto", "variables"];
if address :detail :matches "to" "*" { fileinto "plus.${1}"; }
