require "fileinto";
if address :is "bcc" "x@y" { fileinto "bcc"; } else { keep; }
