# message: auto.eml
# sender: carol@remote.test
require "vacation";
vacation "I am away.";
