require ["date", "fileinto"];
if date :is :zone "+0000" "date" "hour" "09" {
    fileinto "Morning";
}
