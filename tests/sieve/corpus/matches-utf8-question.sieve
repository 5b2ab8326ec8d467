# message: encoded.eml
require "fileinto";
if header :matches "subject" "Gr??e *" { fileinto "two"; } elsif header :matches "subject" "Gr?e *" { fileinto "one"; }
