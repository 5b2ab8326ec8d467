require "fileinto";
if header :comparator "i;octet" :is "Subject" "MEETING TOMORROW AT 10" { fileinto "Wrong"; }
else { fileinto "Right"; }
