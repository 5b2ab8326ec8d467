require ["index", "fileinto"];
if header :index 1 :last "received" "x" { fileinto "x"; } else { fileinto "y"; }
