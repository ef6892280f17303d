require ["fileinto", "relational"];
if header :value "lt" "subject" "Q" {
    fileinto "BeforeQ";
}
