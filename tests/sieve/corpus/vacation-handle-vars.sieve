require ["vacation", "variables"];
set "r" "Gone fishing";
vacation :subject "S ${r}" "${r}";
