"""What the "imap" and "imaps" listeners of one server share, built by `serve` before either opens.

One folder registry (`Mailboxes`: a change made through a session of one listener reaches the
IDLE sessions of the other at once) and the FETCH sender processes (sender.py). Kept apart from
the package's `__init__`: the sender processes import the package for the rendering of FETCH
responses and have no use for the sessions (nor for the manifest models they bring in).
"""

from __future__ import annotations

from appliance.connection import Listener, listen
from appliance.context import ListenerSpec, Services

# The command modules register their handlers in the command table when imported.
from appliance.imap import folders, idle, quota, selected, sorting  # noqa: F401
from appliance.imap.mailboxes import Mailboxes
from appliance.imap.sender import Senders
from appliance.imap.session import Session
from appliance.imap.syntax import remove_spool


class IMAPServer:
    def __init__(self, services: Services, senders: Senders | None) -> None:
        self.services = services
        self.mailboxes = Mailboxes(services.store, services.executor, readers=services.readers)
        # FETCH responses of clear-text sessions written by processes of their own; None: all here.
        self.senders = senders
        self._spool_cleared = False

    async def start(self, listener: ListenerSpec) -> Listener:
        """Open one listener: "imap" (port 143, STARTTLS) or "imaps" (port 993, RFC 8314)."""
        if not self._spool_cleared:
            self._spool_cleared = True
            spool = self.services.holder.current.data_dir / "tmp" / "imap-append"
            self.services.executor.submit(remove_spool, spool)  # what a crash left behind
        services, mailboxes, senders = self.services, self.mailboxes, self.senders
        return await listen(
            services,
            listener,
            lambda connection: Session(services, listener, connection, mailboxes, senders).run(),
        )

    async def close(self) -> None:
        if self.senders is not None:
            await self.senders.close()
