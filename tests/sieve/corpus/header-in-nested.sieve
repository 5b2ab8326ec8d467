# message: forward.eml
require "fileinto";
if header :contains "subject" "Original" { fileinto "no"; } else { fileinto "outer-only"; }
