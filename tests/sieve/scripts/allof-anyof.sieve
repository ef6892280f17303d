require "fileinto";
if allof (header :contains "subject" "report", anyof (address :is "from" "nobody@x.test", exists "cc")) {
    fileinto "Both";
}
