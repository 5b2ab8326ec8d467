require "fileinto";
if header :matches "subject" "*\\*" { fileinto "Star"; } elsif header :matches "subject" "*1?" { fileinto "Q"; }
