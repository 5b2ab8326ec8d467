# message: encoded.eml
require "fileinto";
if header :contains "subject" "Grüße" { fileinto "de"; }
