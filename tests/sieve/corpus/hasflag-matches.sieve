require ["imap4flags", "fileinto", "variables"];
setflag ["\\Seen", "$Label1"];
if hasflag :matches "$label*" { fileinto "lab${1}"; }
