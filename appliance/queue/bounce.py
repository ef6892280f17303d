"""Delivery status notifications (RFC 3464): "failed" bounces and "delayed" warnings.

The report is `multipart/report; report-type=delivery-status` (RFC 6522): a part in words, the
`message/delivery-status` part for programs, and the original message's header
(`text/rfc822-headers`), never its body.
"""

from __future__ import annotations

import email.utils
import os
from collections.abc import Sequence
from dataclasses import dataclass

MAILER_DAEMON = "MAILER-DAEMON"


@dataclass(frozen=True)
class Failure:
    recipient: str
    status: str  # enhanced status code: "5.1.1", or "4.4.7" for a lifetime that ran out
    diagnostic: str
    remote: str | None
    smtp: bool  # the diagnostic is an SMTP reply


def report(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    arrived: float,
    original: bytes,
    failures: Sequence[Failure],
    action: str,  # "failed" or "delayed"
    retry_until: float | None = None,
) -> bytes:
    """The whole DSN message, CRLF line ends, ready for the store or the queue."""
    boundary = f"{queue_id}.{os.urandom(6).hex()}/{hostname}"
    failed = action == "failed"
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    now = email.utils.formatdate(localtime=True)
    lines = [
        f"From: Mail Delivery System <{MAILER_DAEMON}@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {now}",
        f"Message-ID: <{queue_id}.{action}.{os.urandom(4).hex()}@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: nobody should answer it automatically
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at {hostname}.",
        "",
    ]
    if failed:
        lines += [
            "Your message could not be delivered to one or more recipients.",
            "It has not been delivered to the addresses below and will not be retried.",
        ]
    else:
        until = email.utils.formatdate(retry_until, localtime=True) if retry_until else "later"
        lines += [
            "Your message has not yet been delivered to the addresses below.",
            f"Delivery is still being tried until {until}; you need not send it again.",
        ]
    lines.append("")
    for failure in failures:
        lines.append(f"<{failure.recipient}>: {_one_line(failure.diagnostic)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        # RFC 3464 §2.2: per-message fields.
        f"Reporting-MTA: dns; {hostname}",
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrived, localtime=True)}",
    ]
    for failure in failures:
        # RFC 3464 §2.3: per-recipient fields, each group after an empty line.
        lines += [
            "",
            f"Final-Recipient: rfc822; {failure.recipient}",
            f"Action: {action}",
            f"Status: {failure.status}",
        ]
        if failure.remote:
            lines.append(f"Remote-MTA: dns; {failure.remote.split('[')[0]}")
        kind = "smtp" if failure.smtp else "X-appliance"
        lines.append(f"Diagnostic-Code: {kind}; {_one_line(failure.diagnostic)}")
        lines.append(f"Last-Attempt-Date: {now}")
        if not failed and retry_until:
            lines.append(f"Will-Retry-Until: {email.utils.formatdate(retry_until, localtime=True)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(lines) + "\r\n"
    return text.encode("utf-8") + _header_of(original) + f"\r\n--{boundary}--\r\n".encode()


def _header_of(message: bytes) -> bytes:
    """The original header, CRLF line ends, ending with one CRLF."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    header = message if end < 0 else message[:end]
    header = header.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return header[:100_000] + b"\r\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]
