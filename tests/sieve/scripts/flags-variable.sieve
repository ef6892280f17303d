require ["fileinto", "imap4flags", "variables"];
addflag "mine" "$A";
addflag "mine" "$B";
fileinto :flags "${mine}" "Mine";
