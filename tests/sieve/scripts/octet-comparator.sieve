require "fileinto";
if header :is :comparator "i;octet" "subject" "project report for q4" {
    fileinto "Octet";
} else {
    fileinto "NotOctet";
}
