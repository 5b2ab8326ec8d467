require ["body", "fileinto"];
if body :text :contains "room B" { fileinto "rooms"; }
