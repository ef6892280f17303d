require ["date", "fileinto"];
if date :originalzone :is "date" "zone" "+0100" {
    fileinto "Paris";
}
