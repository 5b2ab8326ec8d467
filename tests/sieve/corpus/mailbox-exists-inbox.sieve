require ["fileinto", "mailbox"];
if mailboxexists "INBOX" { fileinto "seen-inbox"; } else { fileinto "no-inbox"; }
