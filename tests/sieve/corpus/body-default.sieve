require ["body", "fileinto"];
if body :contains "TOMORROW" { fileinto "tmr"; }
