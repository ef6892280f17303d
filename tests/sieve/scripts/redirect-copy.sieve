require "copy";
redirect :copy "archive@backup.test";
