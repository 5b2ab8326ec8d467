require ["variables", "fileinto"];
if header :matches "subject" "Meeting *" { set "x" "${1}"; }
if header :matches "subject" "Nope *" { set "y" "bad"; }
fileinto "${x}${1}";
