# message: multipart.eml
# recipient: john+news@example.test
require ["envelope", "subaddress", "fileinto"];
if envelope :detail :is "to" "news" {
    fileinto "News";
}
