require "fileinto";
if exists "" { fileinto "empty"; } else { fileinto "none"; }
