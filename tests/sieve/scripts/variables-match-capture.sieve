# message: list.eml
require ["fileinto", "variables"];
if header :matches "list-id" "*<*.lists.test>" {
    fileinto "List-${2}";
}
