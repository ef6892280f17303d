# message: bcc.eml
# sender: dave@remote.test
require "vacation";
vacation "I am away.";
