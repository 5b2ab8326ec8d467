require ["variables", "fileinto"];
set :upper "a" "mixed";
set :lowerfirst "b" "ABC";
set :length "c" "hello";
set :upperfirst :lower "d" "hELLO";
fileinto "${a}-${b}-${c}-${d}";
