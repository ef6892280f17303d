# sender: MAILER-DAEMON@remote.test
require "vacation";
vacation "I am away.";
