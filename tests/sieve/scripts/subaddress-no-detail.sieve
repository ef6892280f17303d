require ["subaddress", "fileinto"];
if address :detail :matches "to" "*" {
    fileinto "HasDetail";
}
