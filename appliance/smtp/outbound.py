"""Where mail for other domains goes: the outbound queue (appliance/queue/).

RCPT accepts a remote recipient (or a local one that forwards elsewhere) only when the queue is
running; without it the answer is `453 4.3.0` (temporary: the client keeps the message). After
DATA the session hands the remote recipients to the queue, which returns once the message is on
disk (fsync), before local delivery and before the 250.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def queue_available(queue: Any) -> bool:
    """True when the outbound queue can take mail (so remote recipients may be accepted)."""
    return queue is not None


async def hand_to_queue(
    queue: Any, message: bytes, *, sender: str, recipients: Sequence[str], received: str, sign: bool
) -> str:
    """Give `message` for `recipients` (not local) to the outbound queue, held; its queue id.

    Raises on failure. The message is durable but waits: `release` it once the local part of
    the transaction is delivered too, or `withdraw` it when that failed (the client gets a 4xx
    and sends the whole message again; remote recipients must not get it twice). `sign`: the
    queue may DKIM-sign it (an authenticated or trusted submission, see transaction.py).
    """
    queue_id: str = await queue.enqueue(
        message, sender=sender, recipients=list(recipients), received=received, hold=True, sign=sign
    )
    return queue_id
