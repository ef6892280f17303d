require "fileinto";
if size :over 100 {
    fileinto "Big";
} elsif size :under 10 {
    fileinto "Tiny";
}
