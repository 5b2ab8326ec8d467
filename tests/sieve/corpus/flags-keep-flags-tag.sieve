require "imap4flags";
setflag "one";
keep :flags "two";
