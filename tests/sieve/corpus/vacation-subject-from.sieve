require "vacation";
vacation :subject "Out of office" :from "alice@example.com" :days 1 "Away.";
