# message: multipart.eml
require ["body", "fileinto"];
if body :raw :contains "JVBERi0x" { fileinto "b64"; }
if body :raw :contains "--outer--" { fileinto "boundary"; }
