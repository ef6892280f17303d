"""The POP3 server: RFC 1939 with CAPA (RFC 2449), STLS (RFC 2595) and AUTH PLAIN (RFC 5034).

`start_pop3` opens one listener: "pop3" (port 110, STLS) or "pop3s" (port 995, implicit TLS,
RFC 8314). Each connection runs a `Session` (session.py: the state machine and one method per
command) over a `Connection` (appliance/connection.py: bounded line reads, idle timeout, STLS). After login
the account's Maildir is locked and listed (maildrop.py); messages are read ahead by the reader
process (readahead.py, store/reader.py), large ones streamed, and sent as RFC 1939 wants them
(wire.py). A RETR of the next message, already read, is answered from the connection's data
callback (`Session.answer_now`), without a task switch; every other command goes through the
session's task, in the order sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.connection import Listener
    from appliance.context import ListenerSpec, Services

__all__ = ["start_pop3"]


async def start_pop3(services: Services, listener: ListenerSpec) -> Listener:
    # Imported here, not above: the reader process imports this package for its read functions
    # and has no use for the sessions (nor for the manifest models they bring in).
    from appliance.connection import listen
    from appliance.pop3.session import Session

    return await listen(services, listener, lambda connection: Session(services, listener, connection).run())
