require ["variables", "fileinto"];
set "a" "Work";
if string :is "${a}" "work" { fileinto "ci"; }
set "b" "${a}${a}";
fileinto :copy "${b}";
