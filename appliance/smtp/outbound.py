"""Where mail for other domains goes: the outbound queue (issue 5, not written yet).

Until `services.queue` exists, RCPT answers an authorised client's remote recipient with
`453 4.3.0` (temporary: the client keeps the message and retries), so nothing is lost and nothing
is accepted that cannot be delivered. Once the queue exists, the SMTP session calls
`hand_to_queue` after DATA with the remote recipients, before local delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def queue_available(queue: Any) -> bool:
    """True when the outbound queue can take mail (so remote recipients may be accepted)."""
    return queue is not None


async def hand_to_queue(
    queue: Any, message: bytes, *, sender: str, recipients: Sequence[str], received: str
) -> None:
    """Give `message` for `recipients` (not local) to the outbound queue; raises on failure.

    TODO(issue 5): the queue's interface is not settled. This assumes an awaitable
    `queue.enqueue(message, sender=..., recipients=..., received=...)` that returns once the
    message is durable, so that the SMTP reply can be 250 only after it.
    """
    await queue.enqueue(message, sender=sender, recipients=list(recipients), received=received)
