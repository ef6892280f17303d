# message: bcc.eml
# sender: dave@remote.test
require "vacation";
vacation :addresses ["someone@remote.test"] "I am away.";
