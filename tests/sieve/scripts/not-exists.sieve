# message: list.eml
require "fileinto";
if not exists "List-Id" {
    fileinto "Direct";
}
