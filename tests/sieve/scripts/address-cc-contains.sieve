require "fileinto";
if address :all :contains ["to", "cc"] "anna@" {
    fileinto "WithAnna";
} else {
    fileinto "Other";
}
