require "reject";
if header :contains "subject" "report" {
    reject "I do not accept reports.";
}
