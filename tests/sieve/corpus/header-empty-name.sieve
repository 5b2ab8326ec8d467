require "fileinto";
if header :contains "" "x" { fileinto "e"; }
