# message: list.eml
require ["index", "fileinto"];
if address :index 1 :domain "to" "lists.example.org" { fileinto "first-to"; }
