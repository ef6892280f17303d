"""Every POP3 reply line, in one place.

Response codes in brackets follow RFC 2449 §8 (RESP-CODES: IN-USE, LOGIN-DELAY) and RFC 3206
(SYS/TEMP, SYS/PERM, AUTH). A client reads the code, not the words.
"""

from __future__ import annotations

from appliance.auth.verdict import Reason


def ok(text: str = "") -> bytes:
    return b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return b"-ERR " + prefix.encode() + text.encode() + b"\r\n"


def message_follows(size: int) -> bytes:
    """RETR's "+OK" line: the message's size in octets as sent, CRLF line ends (RFC 1939 §7)."""
    return b"+OK %d octets\r\n" % size


def continuation(challenge: str) -> bytes:
    """RFC 5034 §4: "+ " and a base64 server challenge ("+ " alone for an empty one)."""
    return b"+ " + challenge.encode("ascii") + b"\r\n"


def multiline(first: bytes, lines: list[bytes]) -> bytes:
    """A "+OK" line, the lines (none starts with "."), then the terminator (RFC 1939 §3)."""
    return first + b"".join(line + b"\r\n" for line in lines) + b".\r\n"


GREETING = "{hostname} POP3 server ready"
BANNED = err("Too many failed logins from your address; try again later", "SYS/PERM")
TOO_MANY_CONNECTIONS = err("Too many connections; try again later", "SYS/TEMP")
UNKNOWN_COMMAND = err("Unknown command")
WRONG_STATE = err("Command not valid in this state")
LINE_TOO_LONG = err("Line too long")
BAD_ARGUMENTS = err("Invalid arguments")
NOT_UTF8 = err("Invalid characters in command")
IDLE_TIMEOUT = err("Disconnected for inactivity (RFC 1939 §3)")
# The login no longer holds (the account or its directory user changed): RFC 3206 [AUTH].
REVOKED = err("Your login is no longer valid; log in again", "AUTH")
INTERNAL_ERROR = err("Internal error; closing", "SYS/TEMP")

# AUTHORIZATION (RFC 1939 §7, RFC 2595 §4, RFC 5034)
PLAINTEXT_REFUSED = err("Plaintext authentication is not allowed without TLS; use STLS first", "AUTH")
USER_OK = ok("Send PASS")
PASS_WITHOUT_USER = err("Send USER first")
LOGIN_FAILED = err("Authentication failed", "AUTH")
# The password was right but the login cannot go on (AD 532, 773, 701). RFC 3206 §4: AUTH when the
# user can mend it (change the password), SYS/PERM when only an administrator can (RFC 2449 §8).
LOGIN_REFUSED_BECAUSE = {
    Reason.PASSWORD_EXPIRED: err(Reason.PASSWORD_EXPIRED.text, "AUTH"),
    Reason.MUST_CHANGE_PASSWORD: err(Reason.MUST_CHANGE_PASSWORD.text, "AUTH"),
    Reason.ACCOUNT_EXPIRED: err(Reason.ACCOUNT_EXPIRED.text, "SYS/PERM"),
}
TOO_MANY_FAILURES = err("Too many failed logins; closing", "AUTH")
DIRECTORY_UNAVAILABLE = err("Authentication is temporarily unavailable; try again later", "SYS/TEMP")
MAILDROP_UNAVAILABLE = err("Your mailbox cannot be opened now; try again later", "SYS/TEMP")
IN_USE = err("Your mailbox is in use by another session", "IN-USE")
UNKNOWN_MECHANISM = err("Unrecognized authentication type")
AUTH_CANCELLED = err("Authentication cancelled")
AUTH_MALFORMED = err("Malformed SASL response")


def mechanisms(names: tuple[str, ...]) -> bytes:
    """The answer to AUTH without arguments: the SASL mechanisms offered, one a line."""
    return multiline(ok("Mechanisms follow"), [name.encode("ascii") for name in names])


# STLS (RFC 2595 §4)
STLS_BEGIN = ok("Begin TLS negotiation")
STLS_ALREADY = err("Already using TLS")
STLS_UNAVAILABLE = err("TLS is not available now", "SYS/TEMP")

# TRANSACTION (RFC 1939 §5, §7)
NO_SUCH_MESSAGE = err("No such message")
ALREADY_DELETED = err("Message is deleted")
MESSAGE_VANISHED = err("Message cannot be read any more")
READ_FAILED = err("Message cannot be read now; try again later", "SYS/TEMP")

# UPDATE (RFC 1939 §6)
UPDATE_FAILED = err("Some deleted messages were not removed", "SYS/TEMP")
BYE = "{hostname} POP3 server signing off"
