require ["imap4flags", "variables", "fileinto"];
set "myflags" "";
addflag "myflags" "A B";
removeflag "myflags" "A";
if hasflag "myflags" "B" { fileinto :flags "${myflags}" "X"; }
