require ["include", "fileinto"];
include :personal "returns-early";
fileinto "AfterInclude";
