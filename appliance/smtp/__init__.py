"""The SMTP server: inbound mail (MX, port 25) and submission (587 with STARTTLS, 465 with TLS).

ESMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS and
AUTH PLAIN/LOGIN, built on aiosmtpd's protocol class (connection.py). Envelope addresses are
parsed in addresses.py, replies live in replies.py, mail for other domains goes through
outbound.py, and local mail is stored by `appliance.store` before the 250 is sent.
"""

from __future__ import annotations

import asyncio
import logging

from appliance.context import ListenerSpec, Services
from appliance.smtp.connection import SMTPConnection

__all__ = ["start_smtp"]

TLS_HANDSHAKE_TIMEOUT = 30.0


async def start_smtp(services: Services, listener: ListenerSpec) -> asyncio.Server:
    """Listen for one of the listeners "smtp", "submission" or "submissions"."""
    loop = asyncio.get_running_loop()
    # aiosmtpd logs every command at INFO on "mail.log"; our own lines are on "appliance.smtp".
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    context = services.tls.listener_context() if listener.implicit_tls else None
    return await loop.create_server(
        lambda: SMTPConnection(services, listener),
        listener.host,
        listener.port,
        ssl=context,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context else None,
        reuse_address=True,
        backlog=1024,
    )
