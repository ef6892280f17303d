"""The ManageSieve server (RFC 5804): users upload, check, activate and delete their own Sieve scripts.

`start_managesieve` opens the "managesieve" listener (port 4190, STARTTLS). Each connection runs a
`Session` (session.py) over a `Connection` (appliance/connection.py); commands are read and
answers built by wire.py; scripts are kept by the store (store/userscripts.py) and run at delivery
after the domain's `sieve_before` (smtp/filtering.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.connection import Listener
    from appliance.context import ListenerSpec, Services

__all__ = ["start_managesieve"]


async def start_managesieve(services: Services, listener: ListenerSpec) -> Listener:
    from appliance.connection import listen
    from appliance.managesieve.session import Session

    return await listen(services, listener, lambda connection: Session(services, listener, connection).run())
