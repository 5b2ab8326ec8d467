# to: alice+news@example.com
require ["subaddress", "envelope", "fileinto"];
if envelope :detail "to" "news" { fileinto "News"; }
if envelope :user "to" "alice" { fileinto "alice"; }
