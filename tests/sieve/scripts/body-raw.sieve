# message: multipart.eml
require ["body", "fileinto"];
if body :raw :contains "<b>soup</b>" {
    fileinto "Raw";
}
