require ["fileinto", "copy"];
fileinto :copy "Copies";
