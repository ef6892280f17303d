"""The POP3 server: RFC 1939 with CAPA (RFC 2449), STLS (RFC 2595) and AUTH PLAIN (RFC 5034).

`start_pop3` opens one listener: "pop3" (port 110, STLS) or "pop3s" (port 995, implicit TLS,
RFC 8314). Each connection runs a `Session` (session.py: the state machine and one method per
command) over a `Connection` (connection.py: bounded line reads, idle timeout, STLS). After login
the account's Maildir is locked and listed (maildrop.py); messages are read ahead by the
reader process (readahead.py, store/reader.py), large ones streamed, and sent as RFC 1939 wants them (wire.py).
"""

from __future__ import annotations

import asyncio

from appliance.context import ListenerSpec, Services
from appliance.pop3.connection import listen
from appliance.pop3.session import Session

__all__ = ["start_pop3"]


async def start_pop3(services: Services, listener: ListenerSpec) -> asyncio.Server:
    return await listen(services, listener, lambda connection: Session(services, listener, connection).run())
