require ["date", "fileinto", "variables"];
if date :matches :zone "-0500" "date" "iso8601" "*" {
    set "stamp" "${1}";
}
if string :is "${stamp}" "2026-12-07T04:15:30-05:00" {
    fileinto "Iso";
}
