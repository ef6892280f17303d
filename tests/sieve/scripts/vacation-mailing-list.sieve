# message: list.eml
# sender: devel-bounces@lists.test
require "vacation";
vacation "I am away.";
