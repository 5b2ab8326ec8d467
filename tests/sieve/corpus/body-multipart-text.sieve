# message: multipart.eml
require ["body", "fileinto"];
if body :text :contains "Grüße" { fileinto "latin1"; }
if body :text :contains "secret invoice" { fileinto "pdf-leak"; }
