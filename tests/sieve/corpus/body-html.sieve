# message: html.eml
require ["body", "fileinto"];
if body :text :contains "<b>" { fileinto "tags"; }
if body :text :contains "bold words" { fileinto "text"; }
