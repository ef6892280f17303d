require "fileinto";
if size :under 1K {
    fileinto "Small";
}
