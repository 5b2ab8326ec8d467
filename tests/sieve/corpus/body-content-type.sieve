# message: multipart.eml
require ["body", "fileinto"];
if body :content "text/x-note" :contains "thirty days" { fileinto "note"; }
if body :content "text/plain" :contains "42 EUR" { fileinto "plain"; }
