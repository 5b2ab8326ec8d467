require ["imap4flags", "fileinto"];
setflag "A";
fileinto :flags "B" "INBOX";
