require "fileinto";
if allof (header :contains "from" "bob", not header :contains "subject" "spam") { fileinto "A"; }
if anyof (false, header :contains "to" "nobody") { fileinto "B"; }
