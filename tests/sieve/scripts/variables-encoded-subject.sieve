# message: multipart.eml
require ["fileinto", "variables"];
if header :matches "subject" "Caf* menu" {
    fileinto "Menu-${1}";
}
