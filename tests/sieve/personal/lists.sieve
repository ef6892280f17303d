require ["fileinto", "imap4flags"];
if exists "list-id" {
    addflag "$List";
    fileinto "Lists";
}
