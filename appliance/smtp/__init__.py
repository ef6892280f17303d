"""The SMTP server: inbound mail (MX, port 25) and submission (587 with STARTTLS, 465 with TLS).

ESMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS and
AUTH PLAIN/LOGIN. Each connection runs a `Session` (session.py: the state machine and one method
per command) over the transport all protocols share (`appliance.connection`). The mail
transaction's rules and delivery are in transaction.py, DATA is read by data.py, envelope
addresses are parsed in addresses.py, replies live in replies.py, mail for other domains goes
through outbound.py, and local mail is stored by `appliance.store` before the 250 is sent.
"""

from __future__ import annotations

from appliance.connection import Listener, listen
from appliance.context import ListenerSpec, Services
from appliance.smtp.session import Session

__all__ = ["start_smtp"]

BACKLOG = 1024  # a burst of new connections (one per message) waits in the kernel, not refused


async def start_smtp(services: Services, listener: ListenerSpec) -> Listener:
    """Listen for one of the listeners "smtp", "submission" or "submissions"."""
    return await listen(
        services,
        listener,
        lambda connection: Session(services, listener, connection).run(),
        backlog=BACKLOG,
    )
