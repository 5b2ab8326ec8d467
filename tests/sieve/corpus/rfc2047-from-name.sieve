# message: encoded.eml
require "fileinto";
if header :contains "from" "Jürgen" { fileinto "juergen"; }
