if header :contains "subject" "meeting" { discard; }
