require "imap4flags";
setflag "\\Seen";
keep;
