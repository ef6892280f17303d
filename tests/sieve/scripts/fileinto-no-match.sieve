require "fileinto";
if header :is "subject" "Project" {
    fileinto "Reports";
}
