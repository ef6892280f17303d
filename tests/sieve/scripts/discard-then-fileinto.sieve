require "fileinto";
discard;
fileinto "Kept";
