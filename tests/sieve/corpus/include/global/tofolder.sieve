require "fileinto";
fileinto "GlobalIncluded";
