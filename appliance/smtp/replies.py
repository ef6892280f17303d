"""Every reply this SMTP server sends, with its enhanced status code (RFC 3463, RFC 2034).

RFC 2034 §3: once ENHANCEDSTATUSCODES is advertised, every reply except the greeting and the
replies to HELO/EHLO carries an enhanced code. aiosmtpd's own replies (the commands it handles
unchanged: NOOP, RSET, QUIT, VRFY, HELP, overlong lines) lack one; `with_enhanced_code` adds the
code that fits their basic code.
"""

from __future__ import annotations

import re

# -- connection ---------------------------------------------------------------------------------
TOO_MANY_CONNECTIONS = "421 4.7.0 {host} too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 {host} too many connections from your address, try again later"
BANNED = "421 4.7.0 {host} refused: too many failed logins from your address"
TIMEOUT = "421 4.4.2 {host} timeout exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 {host} service shutting down"
TOO_MANY_UNRECOGNIZED = "421 4.7.0 {host} too many unrecognized commands, closing connection"
# What aiosmtpd says before it closes a connection that sent too many unknown commands.
AIOSMTPD_UNRECOGNIZED_LIMIT = "502 5.5.1 Too many unrecognized commands"

# -- TLS and AUTH (RFC 3207, RFC 4954) ----------------------------------------------------------
STARTTLS_READY = "220 2.0.0 Ready to start TLS"
TLS_ACTIVE = "503 5.5.1 TLS already active"
TLS_UNAVAILABLE = "454 4.7.0 TLS not available"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"  # the same whatever the cause
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not allowed during a mail transaction"
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Malformed PLAIN response"
AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
AUTH_TOO_MANY_FAILURES = "421 4.7.0 {host} too many failed logins, closing connection"
AUTH_REQUIRED = "530 5.7.0 Authentication required"

# -- the transaction (RFC 5321 §4.1.1, §4.2) ----------------------------------------------------
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
DELIVERED = "250 2.0.0 OK id={id}"
NEED_HELO = "503 5.5.1 Send EHLO or HELO first"
NESTED_MAIL = "503 5.5.1 Sender already given"
NEED_MAIL = "503 5.5.1 Need MAIL command first"
NEED_RCPT = "503 5.5.1 Need RCPT command first"
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
UNKNOWN_PARAMETER = "555 5.5.4 Parameter not recognized: {name}"
BAD_PARAMETER = "501 5.5.4 Bad value for parameter {name}"
SMTPUTF8_NEEDS_EHLO = "501 5.5.4 SMTPUTF8 needs EHLO"
NON_ASCII_WITHOUT_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"
UNKNOWN_RECIPIENT = "550 5.1.1 <{address}>: Recipient address rejected: no such user here"
RELAY_DENIED = "554 5.7.1 <{address}>: Relay access denied"
OUTBOUND_NOT_CONFIGURED = "453 4.3.0 <{address}>: outbound delivery is not configured, try later"
SENDER_NOT_OWNED = "553 5.7.1 <{address}>: Sender address not owned by the authenticated user"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
MAILBOX_FULL = "452 4.2.2 <{address}>: Mailbox full"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long"
BYE = "221 2.0.0 Bye"

# Basic code → enhanced code, for aiosmtpd's replies that carry none.
_DEFAULT_ENHANCED = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.5.0",  # RFC 5321 §3.5.3: cannot VRFY, will accept
    "421": "4.4.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_BASIC = re.compile(r"^([245]\d\d)([ -])(.*)$", re.DOTALL)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def printable(reply: str) -> str:
    """RFC 5321 §4.2: reply text is printable characters and tab. aiosmtpd echoes an unknown
    command as sent; a NUL or bare CR in it becomes "?" rather than reaching the client."""
    return _CONTROL.sub("?", reply)


def with_enhanced_code(reply: str) -> str:
    """`reply` with an enhanced status code after its basic code, when it has none yet."""
    if _HAS_ENHANCED.match(reply):
        return reply
    match = _BASIC.match(reply)
    if match is None:
        return reply  # 334/354 continuations carry none
    code, separator, text = match.groups()
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{separator}{enhanced} {text.removeprefix('Error: ')}"
