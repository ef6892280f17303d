# message: bulk.eml
# sender: news@shop.test
require "vacation";
vacation "I am away.";
