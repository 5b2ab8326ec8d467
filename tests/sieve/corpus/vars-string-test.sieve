require ["variables", "fileinto"];
set "x" "abc";
if string :is "${x}" "abc" { fileinto "yes"; }
if string :matches "${x}" "a?c" { fileinto "q"; }
