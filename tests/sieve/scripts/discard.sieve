# message: bulk.eml
if header :contains "subject" "offers" {
    discard;
    stop;
}
