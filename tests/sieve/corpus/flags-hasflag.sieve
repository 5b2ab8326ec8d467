require ["imap4flags", "fileinto"];
addflag "Junk";
if hasflag :is "junk" { fileinto "Spam"; }
