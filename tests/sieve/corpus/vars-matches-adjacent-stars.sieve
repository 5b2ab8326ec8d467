# message: list.eml
require ["variables", "fileinto"];
if header :matches "subject" "**planning" { fileinto "a${1}b${2}c"; }
