require ["imap4flags", "reject", "fileinto"];
addflag "\\Flagged";
fileinto "a";
reject "no";
