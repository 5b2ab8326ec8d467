require ["fileinto", "mailbox"];
if mailboxexists "Nope" { fileinto "yes"; } else { fileinto :create "Nope"; }
