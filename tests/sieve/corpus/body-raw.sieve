# message: encoded.eml
require ["body", "fileinto"];
if body :raw :contains "=C3=BC" { fileinto "rawqp"; }
if body :text :contains "gültig" { fileinto "decoded"; }
