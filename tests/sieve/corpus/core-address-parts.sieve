require "fileinto";
if address :domain "from" "example.org" { fileinto "org"; }
if address :localpart "cc" "carol" { fileinto "carol"; }
if address :all :is "to" "alice@example.com" { fileinto "me"; }
