# message: list.eml
require ["variables", "fileinto"];
if header :matches "subject" "*??ease*?" { fileinto "${1}-${2}${3}-${4}-${5}"; }
