require "fileinto";
fileinto text:
..dot
.
;
