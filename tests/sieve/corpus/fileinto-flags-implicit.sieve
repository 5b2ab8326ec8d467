require ["imap4flags", "fileinto"];
addflag "\\Flagged";
if header :contains "subject" "nomatch" { fileinto "x"; }
