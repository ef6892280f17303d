require "fileinto";
if address :domain :is "from" "remote.test" {
    fileinto "Remote";
}
