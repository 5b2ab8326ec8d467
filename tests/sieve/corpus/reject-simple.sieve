require "reject";
if header :contains "subject" "Meeting" { reject "I do not attend meetings."; }
