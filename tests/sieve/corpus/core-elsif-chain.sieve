require "fileinto";
if header :contains "subject" "xyz" { fileinto "1"; }
elsif header :contains "subject" "Meeting" { fileinto "2"; }
else { fileinto "3"; }
