# message: group.eml
require ["fileinto", "variables"];
if address :localpart :matches "from" "*" { fileinto "lp-${1}"; }
