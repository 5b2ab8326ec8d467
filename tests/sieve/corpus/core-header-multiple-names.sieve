require "fileinto";
if header :contains ["to", "cc"] "carol" { fileinto "cc"; }
