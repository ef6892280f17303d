redirect "archive@backup.test";
