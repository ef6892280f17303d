"""What the tests share: waiting on a condition (`wait`), raw line clients per protocol (`lines`,
`smtp`, `pop3`, `imap`), the accounts and clients of each protocol's tests, the outbound queue's
SMTP peers (`queue`) and a DNS server of the tests' own (`dns_server`)."""
