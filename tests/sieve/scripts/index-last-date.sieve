require ["date", "index", "fileinto"];
if date :index 1 :last :zone "+0000" :is "received" "time" "09:15:40" {
    fileinto "FirstHop";
}
