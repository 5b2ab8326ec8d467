# message: group.eml
require "fileinto";
if address :domain "to" "example.com" { fileinto "g"; }
