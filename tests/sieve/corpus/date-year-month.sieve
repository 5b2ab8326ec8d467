require ["date", "fileinto"];
if date :zone "+0000" "date" "year" "2026" { fileinto "y2026"; }
if date :zone "+0000" "date" "month" "12" { fileinto "dec"; }
