require "fileinto";
if header :matches "subject" "Meeting*at ??" { fileinto "Matched"; }
