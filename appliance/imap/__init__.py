"""The IMAP server: IMAP4rev1 (RFC 3501) with the extensions today's clients use.

`start_imap` opens one listener: "imap" (port 143, STARTTLS) or "imaps" (port 993, implicit
TLS, RFC 8314). Each connection runs a `Session` (session.py: the command loop and the
state machine) over the POP3 side's `Connection` (bounded reads, idle timeout, STARTTLS that
drops pipelined bytes). Commands are read by syntax.py, dispatched through commands.py to
session.py, folders.py, selected.py and idle.py; FETCH items are in fetch.py, responses in
responses.py. Folders live in mailboxes.py (an account's tree), index.py (one folder's UIDs and
flags, synced with the Maildir++ store) and view.py (a session's selected folder); message
parsing (ENVELOPE, BODYSTRUCTURE, sections) in message.py, SEARCH in search.py.

Extensions: LITERAL+ (RFC 7888), SASL-IR (RFC 4959), ID (RFC 2971), ENABLE (RFC 5161), IDLE
(RFC 2177), NAMESPACE (RFC 2342), UNSELECT (RFC 3691), UIDPLUS (RFC 4315), MOVE (RFC 6851),
CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services
    from appliance.imap.mailboxes import Mailboxes

__all__ = ["start_imap"]

# One Mailboxes per process (per Services), shared by the imap and imaps listeners, so that a
# change made through one session reaches the IDLE sessions of the other listener at once.
_MAILBOXES: dict[int, tuple[Services, Mailboxes]] = {}


def _mailboxes(services: Services) -> Mailboxes:
    from appliance.imap.mailboxes import Mailboxes
    from appliance.imap.syntax import remove_spool

    found = _MAILBOXES.get(id(services))
    if found is None or found[0] is not services:
        found = (services, Mailboxes(services.store, services.executor, readers=services.readers))
        _MAILBOXES[id(services)] = found
        spool = services.holder.current.data_dir / "tmp" / "imap-append"
        services.executor.submit(remove_spool, spool)  # what a crash left behind
    return found[1]


async def start_imap(services: Services, listener: ListenerSpec) -> asyncio.Server:
    # Imported here, not above: the FETCH sender processes import this package for the
    # rendering of FETCH responses and have no use for the sessions (nor the manifest models).
    # The command modules register their handlers in the command table when imported.
    from appliance.imap import folders, idle, selected  # noqa: F401
    from appliance.imap.session import Session
    from appliance.pop3.connection import listen

    mailboxes = _mailboxes(services)
    return await listen(
        services, listener, lambda connection: Session(services, listener, connection, mailboxes).run()
    )
