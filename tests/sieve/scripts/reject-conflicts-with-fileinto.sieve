require ["reject", "fileinto"];
fileinto "Saved";
reject "No.";
