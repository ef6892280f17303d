"""The SMTP server: inbound mail (MX, port 25) and submission (587 with STARTTLS, 465 with TLS).

ESMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS and
AUTH PLAIN/LOGIN, built on aiosmtpd's protocol class (connection.py). Envelope addresses are
parsed in addresses.py, replies live in replies.py, mail for other domains goes through
outbound.py, and local mail is stored by `appliance.store` before the 250 is sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from appliance.context import ListenerSpec, Services
from appliance.smtp.connection import ClientCounter, SMTPConnection
from appliance.tls import build_server_context

__all__ = ["start_smtp"]

TLS_HANDSHAKE_TIMEOUT = 30.0


async def start_smtp(services: Services, listener: ListenerSpec) -> asyncio.Server:
    """Listen for one of the listeners "smtp", "submission" or "submissions"."""
    loop = asyncio.get_running_loop()
    # aiosmtpd logs every command at INFO on "mail.log"; our own lines are on "appliance.smtp".
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    clients = ClientCounter()
    context = _implicit_tls_context(services) if listener.implicit_tls else None
    return await loop.create_server(
        lambda: SMTPConnection(services, listener, clients),
        listener.host,
        listener.port,
        ssl=context,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context else None,
        reuse_address=True,
        backlog=1024,
    )


def _implicit_tls_context(services: Services) -> ssl.SSLContext:
    """The listener's context; each handshake switches to the certificate in force then.

    `create_server` keeps one context for the listener's life; the SNI callback (called for every
    ClientHello, with or without a server name) hands the connection to
    `services.tls.server_context()`, so a renewed certificate applies without reopening the port.
    """
    current = services.tls.server_context()
    certificate, key = services.tls.paths()
    tls = services.holder.current.manifest.server.tls
    context = build_server_context(certificate, key, tls.min_version, tls.ciphers)

    def use_current(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        try:
            ssl_object.context = services.tls.server_context()
        except (OSError, ValueError):
            ssl_object.context = current  # keep serving the last good certificate
        return None

    context.sni_callback = use_current
    return context
