"""Outbound delivery: a durable queue to the rest of the world (issue 5).

`OutboundQueue.enqueue` takes mail for other domains from SMTP and returns once it is on disk;
the queue then delivers it to a smarthost or the domains' MX hosts, retries, and bounces.
"""

from appliance.queue.service import OutboundQueue

__all__ = ["OutboundQueue"]
