require "imap4flags";
addflag ["\\Flagged", "$Work"];
addflag "\\Seen";
removeflag "\\Flagged";
