# message: multipart.eml
require ["subaddress", "fileinto"];
if address :user :is "to" "john" {
    fileinto "John";
}
