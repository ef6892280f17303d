require ["vacation", "fileinto"];
vacation :days 1 :from "john@example.test" "Away.";
fileinto "Seen";
