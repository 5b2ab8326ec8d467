# message: group.eml
require ["fileinto", "variables"];
if header :matches "x-padded" "*" { fileinto "[${1}]"; }
