require ["fileinto", "variables"];
set "folder" "Lists";
fileinto "${folder}";
