require "date";
if date :zone "+2500" "date" "year" "2026" { discard; }
