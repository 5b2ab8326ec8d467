require "fileinto";
if address :all "subject" "x" { fileinto "x"; }
