"""Deliveries written by a process of their own, not by the server's disk threads.

A delivery is a handful of system calls (open, write, fsync, link, fsync of new/), and after each
one a thread must take Python's global lock back. In the server that lock is held most of the time
by the event loop serving the sessions, so under load a delivery that needs about 0.3 ms of the
disk spent 1.5 ms (one disk thread) to 5 ms (twenty) waiting for the lock, and the hand-off to and
from the thread pool added about 2 ms each way (measured with 20 SMTP sessions of 4 KB messages).
The delivery process (child.py: started, stopped and restarted like every helper process) has a
lock of its own.

A request's meta part is JSON {"maildirs": [...], "unique": the Maildir unique name the server
chose, or null}, its data part the message bytes (final: trace headers added, LF line ends). The
reply is empty when the message is in every new/, or JSON {"errno", "strerror", "filename"} when it is in
none of them. If the process dies, the deliveries in flight fail as temporary errors (nothing was
acknowledged), and the server removes what they had linked already (`MaildirWriter.withdraw`:
the names are known from the unique name it chose), so no mailbox keeps a message the client
was told to send again.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.store.child import ChildProcess, Handler, Reply, main
from appliance.store.delivery import DeliveryError, MaildirWriter

log = logging.getLogger("appliance.store")


THREADS = 2  # measured: 1 to 4 differ little; the disk work itself is short (see the module doc)


class DeliveryProcess(ChildProcess):
    """The server's end: `deliver` hands a message to the process and waits for its reply."""

    module = "appliance.store.writer"
    label = "delivery process"
    failed_name = "failed_deliveries"
    threads = THREADS

    def lost_error(self, text: str) -> OSError:
        return DeliveryError(errno.EIO, f"the delivery process {text}")

    def decode(self, meta: bytes, data: memoryview) -> DeliveryError | None:
        if not meta:
            return None
        problem = json.loads(meta)
        return DeliveryError(problem["errno"], problem["strerror"], problem.get("filename"))

    async def deliver(self, data: bytes, maildirs: Sequence[Path], unique: str | None = None) -> None:
        """Store `data` in every Maildir's new/ as `unique` (the process makes one when None;
        see MaildirWriter.deliver). DeliveryError when it is not stored: reported by the process
        (then it is in none of them), or the process lost (then the caller withdraws what it
        may have linked, MaildirWriter.withdraw)."""
        meta = {"maildirs": [str(path) for path in maildirs], "unique": unique}
        problem = await self.request(json.dumps(meta).encode(), data)
        if problem is not None:
            raise problem


# -- the process -----------------------------------------------------------------------------
def _handler() -> Handler:
    writer = MaildirWriter()

    def deliver(meta: bytes, data: bytes) -> Reply:
        try:
            request = json.loads(meta)
            writer.deliver(data, [Path(path) for path in request["maildirs"]], request.get("unique"))
        except OSError as error:
            problem = {
                "errno": error.errno or errno.EIO,
                "strerror": error.strerror or str(error),
                "filename": None if error.filename is None else str(error.filename),
            }
            return json.dumps(problem).encode(), ()
        except Exception as error:  # a defect, not the disk: still nothing was stored
            log.exception("delivery failed")
            return json.dumps({"errno": errno.EIO, "strerror": f"delivery process: {error!r}"}).encode(), ()
        return b"", ()

    return deliver


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], _handler(), "deliver"))
