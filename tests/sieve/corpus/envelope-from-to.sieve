require ["envelope", "fileinto"];
if envelope :is "from" "bob@example.org" { fileinto "fromBob"; }
if envelope :domain "to" "example.com" { fileinto "toUs"; }
