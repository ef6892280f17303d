require ["date", "fileinto", "relational"];
if allof (date :is :zone "+0000" "date" "weekday" "1", date :value "gt" :zone "+0000" "date" "julian" "60000") {
    fileinto "Monday";
}
