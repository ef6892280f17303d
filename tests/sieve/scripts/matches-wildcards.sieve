require "fileinto";
if header :matches "subject" "Proj*Rep?rt*" {
    fileinto "Matched";
}
