require "imap4flags";
addflag ["\\Flagged", "Work"];
addflag "Later";
removeflag "work";
