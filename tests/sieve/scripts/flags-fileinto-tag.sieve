require ["fileinto", "imap4flags"];
addflag "$Ignored";
fileinto :flags ["\\Answered", "$Label1"] "Flagged";
