# message: list.eml
require ["include", "fileinto"];
include :personal :once "lists";
include :personal :once "lists";
include :optional "missing";
