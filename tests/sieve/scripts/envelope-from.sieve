require ["envelope", "fileinto"];
if envelope :is "from" "alice@remote.test" {
    fileinto "FromAlice";
}
