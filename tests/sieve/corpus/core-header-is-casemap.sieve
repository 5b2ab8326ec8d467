require "fileinto";
if header :is "Subject" "MEETING TOMORROW AT 10" { fileinto "Work"; }
