require ["variables", "fileinto"];
set :quotewildcard "p" "a*b";
if string :matches "a*b" "${p}" { fileinto "lit"; }
if string :matches "axxb" "${p}" { fileinto "wild"; }
