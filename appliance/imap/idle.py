"""IDLE (RFC 2177): the client waits, the server pushes EXISTS/EXPUNGE/FETCH as they happen.

The session waits at once for the client's "DONE" line and for a change to the selected folder
(`FolderView.wait_for_change`: a delivery or another session in this process wakes it at once,
changes by other processes are polled). In the authenticated state there is nothing to watch;
IDLE then only waits for DONE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from appliance.connection import LineTooLong
from appliance.imap.commands import AUTHENTICATED, command
from appliance.imap.responses import Bad
from appliance.imap.tokens import Token

if TYPE_CHECKING:
    from appliance.imap.session import Session

WAIT_SLICE = 30.0  # seconds per wait_for_change call
KEEPALIVE = 120.0  # "* OK Still here" after this long without output: keeps NAT mappings open
MAX_DONE_LINE = 1024
FAILURE_PAUSE = 1.0  # seconds between watches when watching fails

log = logging.getLogger("appliance.imap")


@command("IDLE", AUTHENTICATED)
async def idle(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if args:
        raise Bad("IDLE takes no arguments")
    session.send(b"+ idling\r\n")
    await session.send_updates(expunges=True)
    await session.flush()
    # RFC 3501 §5.4 autologout applies while idling too: the line read times out.
    done = asyncio.ensure_future(session.connection.readline(MAX_DONE_LINE, session.idle_timeout()))
    last_output = time.monotonic()
    try:
        while not done.done():
            view = session.view
            if view is None:
                await asyncio.wait({done}, timeout=KEEPALIVE)
            else:
                change = asyncio.ensure_future(view.wait_for_change(WAIT_SLICE))
                try:
                    await asyncio.wait({done, change}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not change.done():
                        change.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await change
                failure = change.exception() if change.done() and not change.cancelled() else None
                if failure is not None:
                    log.error("imap idle watch failed folder=%s error=%r", view.name, failure)
                    await asyncio.wait({done}, timeout=FAILURE_PAUSE)  # no busy loop
                elif change.done() and not change.cancelled() and change.result():
                    await session.send_updates(expunges=True)
            if session.unflushed:
                await session.flush()
                last_output = time.monotonic()
            elif not done.done() and time.monotonic() - last_output >= KEEPALIVE:
                session.send(b"* OK Still here\r\n")
                await session.flush()
                last_output = time.monotonic()
    finally:
        if not done.done():
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await done
    try:
        line = done.result()
    except LineTooLong:
        raise Bad("Expected DONE") from None
    session.reader.bytes_in += len(line) + 2
    if line.strip().upper() != b"DONE":
        raise Bad("Expected DONE")
    return "IDLE terminated"
