require ["fileinto", "imap4flags"];
addflag "$Work";
if hasflag :contains "work" {
    fileinto "Work";
}
