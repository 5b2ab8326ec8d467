# message: list.eml
require ["index", "fileinto"];
if header :index 2 "x-tag" "two" { fileinto "second"; }
if header :index 1 :last "x-tag" "three" { fileinto "last"; }
