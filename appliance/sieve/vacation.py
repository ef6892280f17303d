"""Whether a vacation reply may go out (RFC 5230 §4.5, RFC 3834 §2), and the reply itself.

No reply to the null sender, to the recipient itself, to system addresses (MAILER-DAEMON,
owner-*, *-request), to mail that says it is automatic (Auto-Submitted other than "no",
Precedence bulk/list/junk) or comes from a mailing list (List-* headers, RFC 2369/2919), nor
when none of the recipient's addresses is in To/Cc/Bcc (it reached the recipient through a list
or a Bcc of someone else). The once-per-period record per sender is the caller's.
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage

from appliance.sieve.interpreter import Vacation
from appliance.sieve.message import Envelope, MessageView

LIST_HEADERS = (
    "list-id",
    "list-post",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-owner",
    "list-archive",
)
RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
SYSTEM_LOCAL_PARTS = ("mailer-daemon", "listserv", "majordomo", "mailer")


def refusal(vacation: Vacation, data: bytes, envelope: Envelope) -> str | None:
    """Why no reply may be sent (a few words for the log), or None when one may."""
    message = MessageView(data)
    sender = envelope.sender.lower()
    if sender == "":
        return "null sender"
    own = {a.lower() for a in (envelope.recipient, envelope.original_recipient, *envelope.own_addresses) if a}
    own |= {a.lower() for a in vacation.addresses}
    if sender in own:
        return "sender is the recipient"
    local = sender.rpartition("@")[0]
    if local in SYSTEM_LOCAL_PARTS or local.startswith("owner-") or local.endswith("-request"):
        return "system sender"
    for value in message.header("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "auto-submitted message"
    for value in message.header("precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return "bulk message"
    if any(message.exists(name) for name in LIST_HEADERS):
        return "mailing list message"
    named = {a.lower() for name in RECIPIENT_HEADERS for a in message.addresses(message.raw_header(name))}
    if not named & own:
        return "recipient not named in To/Cc/Bcc"
    return None


def reply(vacation: Vacation, data: bytes, envelope: Envelope, hostname: str) -> EmailMessage:
    """The reply (RFC 3834 §3): to the envelope sender, Auto-Submitted: auto-replied."""
    original = MessageView(data)
    message = EmailMessage(policy=email.policy.SMTP)
    sender = vacation.sender or envelope.recipient
    subjects = original.header("subject")
    subject = (
        vacation.subject
        if vacation.subject is not None
        else f"Auto: {subjects[0] if subjects else ''}".strip()
    )
    message["From"] = sender
    message["To"] = envelope.sender
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-replied (vacation)"
    message["Precedence"] = "bulk"
    ids = original.header("message-id")
    if ids:
        # RFC 3834 §3.1.5: In-Reply-To and References point at the message replied to.
        message["In-Reply-To"] = ids[0]
        message["References"] = " ".join([*original.header("references"), ids[0]]).strip()
    if vacation.mime:
        # RFC 5230 §4.3: with :mime the reason is a MIME entity with its own headers.
        head, _, body = vacation.reason.replace("\r\n", "\n").partition("\n\n")
        for line in head.split("\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip().lower().startswith("content-"):
                message[name.strip()] = value.strip()
        message.set_payload(body)
    else:
        message.set_content(vacation.reason.replace("\r\n", "\n"))
    return message
