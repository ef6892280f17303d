# message: list.eml
require ["date", "fileinto", "variables"];
if date :matches :zone "+0900" "date" "std11" "*" {
    fileinto "${1}";
}
