require ["imap4flags", "fileinto"];
setflag "\\Seen";
fileinto :flags ["\\Answered", "\\Draft"] "Archive";
fileinto "Other";
