# message: multipart.eml
require ["body", "fileinto"];
if body :text :contains "soup and bread" {
    fileinto "Food";
}
