require "fileinto";
discard;
fileinto "x";
