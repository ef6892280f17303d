require ["vacation", "reject"];
vacation "Away.";
reject "No.";
