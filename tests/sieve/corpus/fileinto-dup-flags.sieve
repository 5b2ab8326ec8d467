require ["imap4flags", "fileinto"];
fileinto :flags "A" "Box";
fileinto :flags "B" "Box";
