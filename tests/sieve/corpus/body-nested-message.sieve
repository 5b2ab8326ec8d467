# message: forward.eml
require ["body", "fileinto"];
if body :text :contains "forwarded secret" { fileinto "inner"; }
if body :content "message/rfc822" :contains "forwarded secret" { fileinto "rfc822"; }
