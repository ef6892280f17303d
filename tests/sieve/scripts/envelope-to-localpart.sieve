require ["envelope", "fileinto"];
if envelope :localpart :is "to" "john" {
    fileinto "ToJohn";
}
