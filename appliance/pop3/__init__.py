"""The POP3 server: RFC 1939 with CAPA (RFC 2449), STLS (RFC 2595) and AUTH PLAIN (RFC 5034).

`start_pop3` opens one listener: "pop3" (port 110, STLS) or "pop3s" (port 995, implicit TLS,
RFC 8314). Each connection runs a `Session` (session.py: the state machine and one method per
command) over a `Connection` (connection.py: bounded line reads, idle timeout, STLS). After login
the account's Maildir is locked and listed (maildrop.py); messages are read ahead in the disk
executor (readahead.py), large ones streamed, and sent as RFC 1939 wants them (wire.py).
"""

from __future__ import annotations

import asyncio

from appliance.context import ListenerSpec, Services
from appliance.pop3.connection import Connection
from appliance.pop3.session import TLS_HANDSHAKE_TIMEOUT, Session

__all__ = ["start_pop3"]


async def start_pop3(services: Services, listener: ListenerSpec) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(connection: Connection) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)  # a strong reference while the session runs
        try:
            await Session(services, listener, connection).run()
        finally:
            if task is not None:
                tasks.discard(task)

    context = services.tls.listener_context() if listener.implicit_tls else None
    return await loop.create_server(
        lambda: Connection(serve),
        listener.host,
        listener.port,
        ssl=context,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context else None,
        reuse_address=True,
    )
