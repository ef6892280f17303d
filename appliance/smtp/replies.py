"""Every reply this SMTP server sends, with its enhanced status code (RFC 3463, RFC 2034).

RFC 2034 §3: once ENHANCEDSTATUSCODES is advertised, every reply except the greeting and the
replies to HELO/EHLO carries an enhanced code. The texts are those clients saw when the session
ran on aiosmtpd (with the codes added then), so that nothing changes for them.
"""

from __future__ import annotations

import re

from appliance.auth.verdict import Reason

# -- connection ---------------------------------------------------------------------------------
GREETING = "220 {host} ESMTP appliance"  # RFC 5321 §4.2, RFC 2034 §3: no enhanced code
TOO_MANY_CONNECTIONS = "421 4.7.0 {host} too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 {host} too many connections from your address, try again later"
BANNED = "421 4.7.0 {host} refused: too many failed logins from your address"
TIMEOUT = "421 4.4.2 {host} timeout exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 {host} service shutting down"
TOO_MANY_UNRECOGNIZED = "421 4.7.0 {host} too many unrecognized commands, closing connection"

# -- command lines (RFC 5321 §4.2.4, §4.5.3.1.4) ---------------------------------------------------
UNRECOGNIZED = '500 5.5.2 command "{command}" not recognized'
BAD_SYNTAX = "500 5.5.2 bad syntax"  # an empty line, or a command name that is not ASCII
COMMAND_TOO_LONG = "500 5.5.2 Command line too long"
EHLO_SYNTAX = "501 5.5.4 Syntax: EHLO hostname"
HELO_SYNTAX = "501 5.5.4 Syntax: HELO hostname"
QUIT_SYNTAX = "501 5.5.4 Syntax: QUIT"
RSET_SYNTAX = "501 5.5.4 Syntax: RSET"
STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"
VRFY_SYNTAX = "501 5.5.4 Syntax: VRFY <address>"
CANNOT_VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"  # RFC 5321 §3.5.3
VRFY_UNPARSED = "502 5.5.1 Could not VRFY {argument}"
EXPN_NOT_IMPLEMENTED = "502 5.5.1 EXPN not implemented"
_HELP_COMMANDS = "HELP NOOP QUIT RSET VRFY"
HELP = f"250 2.0.0 Supported commands: {_HELP_COMMANDS}"
HELP_UNKNOWN = f"501 5.5.4 Supported commands: {_HELP_COMMANDS}"
HELP_SYNTAX = {
    "HELP": "HELP [command]",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RSET": "RSET",
    "VRFY": "VRFY <address>",
}

# -- TLS and AUTH (RFC 3207, RFC 4954) ----------------------------------------------------------
STARTTLS_READY = "220 2.0.0 Ready to start TLS"
TLS_ACTIVE = "503 5.5.1 TLS already active"
TLS_UNAVAILABLE = "454 4.7.0 TLS not available"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"  # the same whatever the cause...
# ...but when the password was right and the account cannot log in now (AD 532, 773, 701):
# RFC 4954 §6 535 5.7.8 with words that say why.
AUTH_REFUSED_BECAUSE = {reason: f"535 5.7.8 {reason.text}" for reason in Reason}
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
# The login no longer holds: the account or its directory user changed (auth/revocation.py).
LOGIN_REVOKED = "421 4.7.0 {host} your login is no longer valid, closing connection"
AUTH_REQUIRED = "530 5.7.0 Authentication required"

# -- the transaction (RFC 5321 §4.1.1, §4.2) ----------------------------------------------------
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
DELIVERED = "250 2.0.0 OK id={id}"
NEED_HELO = "503 5.5.1 send HELO first"
NEED_EHLO = "503 5.5.1 send EHLO first"
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
# RFC 6409 §8: a submission server may refuse a From the authenticated user may not use.
FROM_NOT_OWNED = "550 5.7.1 <{address}>: From address not owned by the authenticated user"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
MAILBOX_FULL = "452 4.2.2 <{address}>: Mailbox full"
SIEVE_REJECTED = "550 5.7.1 {reason}"  # RFC 5429 §2.1.1: the recipient's Sieve script refused it
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
# The scanner's verdict (smtp/hygiene.py): RFC 3463 X.7.1, delivery not authorized.
SPAM_REJECTED = "550 5.7.1 {reason}"
SPAM_DEFERRED = "451 4.7.1 {reason}"
SCANNER_UNAVAILABLE = "451 4.3.0 Message could not be checked now, try again later"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long"
BYE = "221 2.0.0 Bye"

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def printable(reply: str) -> str:
    """RFC 5321 §4.2: reply text is printable characters and tab. A reply that echoes the
    client (an unknown command) gets "?" for a NUL or bare CR rather than passing it on."""
    return _CONTROL.sub("?", reply)
